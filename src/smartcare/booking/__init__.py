"""Booking: one fair pool of appointment slots from every hospital (docs/booking.md)."""
