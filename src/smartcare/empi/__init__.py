"""Master patient index: source identities (visit cards), persons, links, matching, review, merge."""
