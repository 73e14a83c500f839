"""Self-pay channels (WeChat Pay, Alipay, UnionPay): one adapter per channel with the channel's own
conventions, behind the one interface of ``base.Channel``."""
