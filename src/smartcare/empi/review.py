"""The review queue: possible matches (weight between the review and link thresholds) that a person decides.

Matching never links below the link weight on its own; such a pair waits here with the score's terms
(the waterfall), so the reviewer sees why the score is what it is. A decision carries itself out
through ``service.link`` (so it is in the history and reversible like any link) and stays on the row:
decided rows are the labelled pairs that training can learn from (``labels``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from smartcare.empi import service
from smartcare.empi.models import Link, Person, Review, SourceIdentity
from smartcare.platform import audit
from smartcare.platform.errors import Conflict, InvalidInput, NotFound

PENDING = ("open", "deferred")
DECIDED = ("linked", "not_match")
DECISIONS = {"link": "linked", "not_match": "not_match", "defer": "deferred"}


@dataclass(frozen=True)
class Side:
    """One of the two cards of a pair, with the person it is linked to now (None while unlinked)."""

    source: SourceIdentity
    person: Person | None


@dataclass(frozen=True)
class Item:
    review: Review
    source: Side
    other: Side

    @property
    def same_person(self) -> bool:
        return self.source.person is not None and self.other.person is not None \
            and self.source.person.id == self.other.person.id


def queue(session: Session, *, state: tuple[str, ...] = PENDING, limit: int = 50,
          offset: int = 0) -> list[tuple[Review, SourceIdentity, SourceIdentity]]:
    """Reviews in ``state`` with both cards, strongest first: those most likely to be one person
    are the cheapest to confirm and the most valuable to get linked."""
    other = aliased(SourceIdentity)
    rows = session.execute(
        select(Review, SourceIdentity, other)
        .join(SourceIdentity, SourceIdentity.id == Review.source_id).join(other, other.id == Review.other_source_id)
        .where(Review.state.in_(state)).order_by(Review.weight.desc(), Review.id).limit(limit).offset(offset))
    return [tuple(r) for r in rows]


def _side(session: Session, source_id: int) -> Side:
    link = session.get(Link, source_id)
    return Side(session.get(SourceIdentity, source_id), session.get(Person, link.person_id) if link else None)


def get(session: Session, review_id: int) -> Item:
    review = session.get(Review, review_id)
    if review is None:
        raise NotFound(f"no review {review_id}", field="review_id")
    return Item(review, _side(session, review.source_id), _side(session, review.other_source_id))


def next_open(session: Session) -> Review | None:
    """The next item to put in front of a reviewer: open ones only, so a deferred pair does not come
    straight back to whoever just deferred it."""
    return session.scalar(select(Review).where(Review.state == "open").order_by(Review.weight.desc(), Review.id).limit(1))


def decide(session: Session, *, review_id: int, decision: str, actor: str) -> Review:
    """Carry out a reviewer's decision. "link" moves ``source_id`` onto the person of ``other_source_id``
    (the card the new one was found to resemble); a final decision (linked, not_match) is not taken
    twice, so two reviewers racing on one pair cannot both act (the row is locked)."""
    if decision not in DECISIONS:
        raise InvalidInput(f"unknown decision {decision!r}", field="decision", hint="link, not_match or defer")
    review = session.get(Review, review_id, with_for_update=True)
    if review is None:
        raise NotFound(f"no review {review_id}", field="review_id")
    if review.state in DECIDED:
        raise Conflict(f"review {review_id} was already decided ({review.state}) by {review.decided_by}",
                       field="review_id", hint="unlink or merge the persons instead to change a decided pair")
    if decision == "link":
        target = session.get(Link, review.other_source_id)
        if target is None:
            raise Conflict(f"source identity {review.other_source_id} is not linked to a person yet", field="review_id")
        current = session.get(Link, review.source_id)
        if current is None or current.person_id != target.person_id:
            service.link(session, source_id=review.source_id, person_id=target.person_id, weight=review.weight,
                         method="review", actor=actor, confirmed=True)
    review.state, review.decided_by, review.decided_at = DECISIONS[decision], actor, datetime.now(UTC)
    session.flush()
    audit.record(session, actor=actor, action="empi.review.decide", target=f"review:{review.id}",
                 detail={"decision": decision, "source_id": review.source_id,
                         "other_source_id": review.other_source_id, "weight": review.weight})
    return review


def labels(session: Session) -> list[tuple[int, int, bool]]:
    """(source_id, other_source_id, is_match) of every decided pair: training labels."""
    rows = session.execute(select(Review.source_id, Review.other_source_id, Review.state)
                           .where(Review.state.in_(DECIDED)).order_by(Review.id))
    return [(a, b, state == "linked") for a, b, state in rows]
