"""Data adapters: readers (files, data frames, REDCap), preparation and the DataReport.

Import the functions from the top-level package (``am.read_data``, ``am.read_redcap``,
``am.prepare``); this package module deliberately imports nothing, so reading a CSV does
not load the modelling stack.
"""
