"""What a question filters and ranks frames by, kept per frame as arrays: stream time, whether the frame
read text, and the BM25 postings of its description's words.

Choosing frames is then a few array operations over the frames a question may read, rather than a pass
of Python over every block's record and description, so a question costs about the same after an hour of
stream as after a minute. Frames are added in stream order with ids 0, 1, ... (the same as their records'
`frame_id`). Entries never change once added, so arrays read under the lock stay valid after it is
released while frames keep arriving.

`compact(first)` forgets the frames before id `first` (the memory's records past their age). It builds new
arrays and swaps them in, so a `frozen()` copy taken for a question keeps reading what it saw.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Iterable

import numpy as np

from memory.words import normal_words

# BM25 as bm25s computes it by default (Lucene's variant), over each description's normalised words.
BM25_K1 = 1.5
BM25_B = 0.75


class _Column:
    """A growable 1-D array; `values()` is a view of what was appended so far."""

    def __init__(self, dtype: type, capacity: int = 4) -> None:
        self.data: np.ndarray = np.zeros(capacity, dtype=dtype)
        self.size = 0

    def append(self, value: float) -> None:
        if self.size == len(self.data):
            self.data = np.concatenate([self.data, np.zeros_like(self.data)])
        self.data[self.size] = value
        self.size += 1

    def values(self) -> np.ndarray:
        return self.data[: self.size]

    def tail(self, start: int) -> _Column:
        """A new column holding entries [start, size) of this one."""
        kept = self.values()[start:]
        column = _Column(self.data.dtype.type, max(4, 2 * len(kept)))
        column.data[: len(kept)] = kept
        column.size = len(kept)
        return column


class FrameTable:
    """Per-frame stream time, text flag and description words of frames [first, len), in frame id order."""

    def __init__(self) -> None:
        self.first = 0  # frames before this id were compacted away
        self._times = _Column(np.float64, 256)
        self._reads_text = _Column(np.bool_, 256)
        self._lengths = _Column(np.float64, 256)
        # word -> (frame ids, term frequencies), ids ascending
        self._postings: dict[str, tuple[_Column, _Column]] = {}
        self.lock = threading.Lock()

    def __len__(self) -> int:
        """The next frame's id: every frame added, compacted ones included."""
        return self.first + self._times.size

    def add(self, stream_time: float, text: str, reads_text: bool) -> int:
        """Add the next frame; returns its id."""
        counts: dict[str, int] = {}
        for word in normal_words(text) or ["\x00"]:  # an empty description still has a length of one
            counts[word] = counts.get(word, 0) + 1
        with self.lock:
            frame_id = self.first + self._times.size
            self._times.append(stream_time)
            self._reads_text.append(reads_text)
            self._lengths.append(sum(counts.values()))
            for word, count in counts.items():
                posting = self._postings.get(word)
                if posting is None:
                    posting = self._postings[word] = (_Column(np.int64), _Column(np.float64))
                posting[0].append(frame_id)
                posting[1].append(count)
            return frame_id

    def times(self, ids: np.ndarray) -> np.ndarray:
        """Stream times of the frames `ids` (each at least `first`)."""
        with self.lock:
            return np.asarray(self._times.values()[self._rows(ids)], dtype=np.float64)

    def reads_text(self, ids: np.ndarray) -> np.ndarray:
        """Whether each of the frames `ids` read some text (bool)."""
        with self.lock:
            return np.asarray(self._reads_text.values()[self._rows(ids)], dtype=np.bool_)

    def count_before(self, stream_time: float) -> int:
        """The id of the first frame at `stream_time` or later (frames are in stream order)."""
        with self.lock:
            return self.first + int(np.searchsorted(self._times.values(), stream_time, side="left"))

    def compact(self, first: int) -> None:
        """Forget the frames before id `first`: new arrays are swapped in, frozen copies keep the old ones."""
        with self.lock:
            drop = first - self.first
            if drop <= 0:
                return
            self._times = self._times.tail(drop)
            self._reads_text = self._reads_text.tail(drop)
            self._lengths = self._lengths.tail(drop)
            postings: dict[str, tuple[_Column, _Column]] = {}
            for word, (ids, frequencies) in self._postings.items():
                start = int(np.searchsorted(ids.values(), first, side="left"))
                if start < ids.size:
                    postings[word] = (ids.tail(start), frequencies.tail(start))
            self._postings = postings
            self.first = first

    def frozen(self) -> FrameTable:
        """A copy that keeps reading today's arrays (and sees frames added later) whatever `compact` does."""
        with self.lock:
            return copy.copy(self)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        rows = np.asarray(ids, dtype=np.int64) - self.first
        if len(rows) and int(rows.min()) < 0:
            raise IndexError(f"frame {int(rows.min()) + self.first} was compacted away (the table starts later)")
        return rows

    def bm25(self, ids: np.ndarray, words: Iterable[str]) -> np.ndarray:
        """BM25 scores (len(ids),) of the descriptions of frames `ids` (ascending) against `words`, both as
        normalised words (`memory.words.normal_words`), with the frames `ids` as the collection.

        Lucene's BM25 (k1 1.5, b 0.75, idf log(1 + (N - df + 0.5) / (df + 0.5))), as the bm25s library
        scores by default (`tests/test_retrieval.py` checks the two agree).
        """
        query = list(dict.fromkeys(words))
        scores = np.zeros(len(ids), dtype=np.float64)
        if not len(ids) or not query:
            return scores.astype(np.float32)
        with self.lock:
            length = self._lengths.values()[self._rows(ids)]
            postings = [(p[0].values(), p[1].values()) for word in query if (p := self._postings.get(word))]
        norm = BM25_K1 * (1 - BM25_B + BM25_B * length / length.mean())
        for posting_ids, frequencies in postings:
            at = np.minimum(np.searchsorted(ids, posting_ids), len(ids) - 1)
            found = ids[at] == posting_ids
            df = int(np.count_nonzero(found))
            if df:
                tf = np.zeros(len(ids), dtype=np.float64)
                tf[at[found]] = frequencies[found]
                idf = math.log(1 + (len(ids) - df + 0.5) / (df + 0.5))
                scores += idf * tf / (tf + norm)
        return scores.astype(np.float32)
