"""The pure core: occasion and time-zone arithmetic, the retry-delay policy. No I/O, no bday imports
beyond itself: everything here is testable without a database or a broker."""
