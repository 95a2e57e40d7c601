"""The named presets (``--config cpu|quality|tiny``), shipped as the package ``talkgs.configs``."""
