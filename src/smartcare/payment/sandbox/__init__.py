"""Stand-ins for the other parties of a mixed payment, each served by its own process on its own port
(``smartcare sandbox medins|insurer|wechat|alipay|unionpay``): they speak the party's conventions, keep
their own books, and inject faults on request so that the platform's saga can be tested against them."""
