"""The seeded fault simulation, short: settlements with orchestrator crashes at random points, timeouts,
lost and duplicate replies, business errors, notifications late, twice or never, and refunds. Afterwards
every settlement has ended (completed or fully compensated), the ledger balances, each party's books
agree with the platform's order by order (nobody charged twice) and reconciliation finds nothing."""

from __future__ import annotations

from smartcare.payment import parties, simulate


def test_faults_and_crashes_leave_every_settlement_whole(client, payment_region):
    region = payment_region
    region.calm()
    facility = region.hospital[0]
    party = parties.current()
    patients = simulate.prepare_patients(party, count=12, seed=7)
    request = {"error": 0.03, "timeout": 0.05, "lost_reply": 0.05, "duplicate": 0.05, "hang_seconds": 0.9, "seed": 7}
    for name in ("medins", "insurer"):
        region.faults(name, **request)
    for name in ("wechat", "alipay", "unionpay"):
        region.faults(name, **request, notify_never=0.2, notify_late=0.3, notify_twice=0.3, late_seconds=1.0)
    try:
        report = simulate.run(party, patients=patients, facility_code=facility, count=120, workers=6, crash_rate=0.02,
                              refund_share=0.15, seed=7)
    finally:
        region.calm()
    print(f"\n{report}")
    assert sum(report.states.values()) == 120 and report.crashes > 0
    assert report.states["completed"] > 0 and report.states["compensated"] > 0
    assert sum(sum(c.values()) for c in report.faults.values()) > 0
    assert set(report.states) <= {"completed", "compensated"}, report.states
    assert report.ledger_balanced and report.open_pending == 0
    assert report.charged_wrong == [] and report.insurance_wrong == [] and report.insurer_wrong == []
    assert report.recon_differences == []
    assert report.ok
