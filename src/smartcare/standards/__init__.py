"""Codecs for the health-data standards the platform speaks (HL7 v2 and MLLP, CDA, FHIR).

Pure functions: no database, no network.
"""
