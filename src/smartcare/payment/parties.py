"""The other parties of a payment, as the platform reaches them: the medical-insurance centre (one
client per hospital, since each hospital signs its messages with its own code), the commercial
insurer and the three payment channels — built from the settings, once per configuration."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sqlalchemy import text

from smartcare.payment.channels.base import Channel
from smartcare.payment.channels.credentials import load_or_create
from smartcare.payment.insurer import Insurer
from smartcare.payment.medins import MedicalInsuranceCentre
from smartcare.platform.db import session_scope
from smartcare.platform.settings import Settings, get_settings

CHANNELS = ("wechat", "alipay", "unionpay")
#: The commercial insurer the region works with (惠民保-style city plan); one for now.
INSURER = "HMB"


@dataclass
class Parties:
    medins_url: str
    insurer: Insurer
    channels: dict[str, Channel]
    _centres: dict[str, MedicalInsuranceCentre] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def medins(self, facility_code: str) -> MedicalInsuranceCentre:
        with self._lock:
            if facility_code not in self._centres:
                self._centres[facility_code] = MedicalInsuranceCentre(self.medins_url, fixmedins_code=facility_code)
            return self._centres[facility_code]

    def channel(self, name: str) -> Channel:
        return self.channels[name]

    def new_msgid(self, facility_code: str) -> str:
        """A new message id for ``facility_code``'s next message to the centre (unique: a database sequence)."""
        with session_scope() as session:
            seq = session.execute(text("SELECT nextval('payment.medins_msg_seq')")).scalar_one()
        return self.medins(facility_code).new_msgid(seq)


def channel_adapters(settings: Settings) -> dict[str, Channel]:
    from smartcare.payment.channels.alipay import AliPay
    from smartcare.payment.channels.unionpay import UnionPay
    from smartcare.payment.channels.wechat import WeChatPay

    keys = settings.resolved_payment_keys_dir()
    notify = settings.resolved_payment_notify_url().rstrip("/") + "/api/v1/payment/notify/"
    return {"wechat": WeChatPay(settings.payment_wechat_url, load_or_create("wechat", keys), notify_url=notify + "wechat"),
            "alipay": AliPay(settings.payment_alipay_url, load_or_create("alipay", keys), notify_url=notify + "alipay"),
            "unionpay": UnionPay(settings.payment_unionpay_url, load_or_create("unionpay", keys),
                                 notify_url=notify + "unionpay")}


_built: dict[tuple, Parties] = {}
_built_lock = threading.Lock()


def current() -> Parties:
    """The parties of the current settings (tests point the settings at their sandboxes)."""
    settings = get_settings()
    key = (settings.payment_medins_url, settings.payment_insurer_url, settings.payment_wechat_url,
           settings.payment_alipay_url, settings.payment_unionpay_url, settings.resolved_payment_notify_url(),
           str(settings.resolved_payment_keys_dir()), settings.payment_timeout_seconds)
    with _built_lock:
        if key not in _built:
            _built[key] = Parties(settings.payment_medins_url, Insurer(settings.payment_insurer_url),
                                  channel_adapters(settings))
        return _built[key]
