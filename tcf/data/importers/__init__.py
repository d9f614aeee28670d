"""Convert the raw files researchers download into the tcf dataset layout (``tcf data import NAME SRC OUT``).

Output: ``behaviors.tsv`` (header ``user_id<TAB>items``) and ``items.tsv`` (header ``item_id<TAB>text``),
written whole or not at all. Every importer keeps each user's items in time order (ties in file order),
users in order of first appearance, drops exact duplicate interactions (same user, item and time) and
interactions with an item that has no text (both counted), so the result always loads in strict mode.
A malformed input line stops the import with one ``FILE:LINE: field: message`` error.

One module per source; :mod:`.common` holds what they share (streaming readers, the interaction log,
the writer).
"""

from tcf.data.importers.amazon import import_amazon
from tcf.data.importers.hm import import_hm
from tcf.data.importers.mind import import_mind
from tcf.data.importers.movielens import import_movielens
from tcf.data.importers.recbole import import_recbole
from tcf.data.importers.westlake import import_microlens, import_pixelrec

__all__ = ["import_amazon", "import_hm", "import_microlens", "import_mind", "import_movielens", "import_pixelrec",
           "import_recbole"]
