"""Reading a prepared subject folder (the consumer side of ``talkgs prepare``)."""

from talkgs.data.schema import LABELS as LABELS
from talkgs.data.schema import Label as Label
from talkgs.data.subject import Subject as Subject

__all__ = ["LABELS", "Label", "Subject"]
