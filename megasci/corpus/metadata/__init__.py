"""Stage 1 of the corpus builder: choose papers from arXiv's metadata.

    index.py      the filter and the index: load_metadata reads any mix of channels, keeps what
                  MetadataFilterConfig admits and counts every entry's outcome
    record.py     MetadataRecord and the rules every channel shares (make_record, withdrawal notices,
                  unwrapped titles and abstracts, v1 dates)
    snapshot.py, oai.py, abs_files.py   one reader per channel: the Kaggle snapshot (JSON lines),
                  OAI-PMH responses (arXivRaw, arXiv, oai_dc), .abs files

The names below are the ones callers outside the package use.
"""

from megasci.corpus.metadata.index import (
    OUTCOMES,
    MetadataFilterConfig,
    MetadataIndex,
    load_metadata,
    metadata_channel,
    metadata_files,
)
from megasci.corpus.metadata.record import MetadataRecord

__all__ = [
    "OUTCOMES",
    "MetadataFilterConfig",
    "MetadataIndex",
    "MetadataRecord",
    "load_metadata",
    "metadata_channel",
    "metadata_files",
]
