"""The ``talkgs`` command: thin entry points over the library."""
