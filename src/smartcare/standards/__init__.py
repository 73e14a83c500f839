"""Codecs for the health-data standards the platform speaks (HL7 v2, MLLP, CDA, FHIR): pure functions, no database, no network."""
