"""spaCy NER for the PII analyzer: only on the tokens a name or place can come from, with a faster matrix product
and decoder. The entities are the whole document's, with the cheapest parts of spaCy's own model.

**Windows.** ``en_core_web_sm``'s NER is local: its token vectors come from its own embedding and a 4-layer CNN with
a window of one token on each side (it listens to no shared tok2vec), so a token's vector depends on the 4 tokens
on either side and nothing further; its transition system then reads the vectors of the next token, the token
before it and the first token of an open entity. ``ner_windows`` takes the tokens around each **candidate word**
(``candidate_offsets``: a capitalized word other than a stop word such as "The", "All", "Please", or an acronym
such as "US"): 4 tokens before it and 5 after, so the vectors of the candidate and of the token after it are exact,
and whether an entity starts at the candidate and whether it goes on past it is decided as in the whole document
(a name of several capitalized words is several candidates, whose windows merge). A PERSON or LOCATION that spaCy
finds without any such word (the small model now and then tags a card number or an IPv6 address as a PERSON) is
not looked for; benchmarks/pii_recall.py counts what that changes. Windows are built from the document's own
tokens (``Doc(words, spaces)``), so their tokenization is the document's.

**Matrix product.** spaCy's ops multiply with blis, which selects its generic kernel on the AMD EPYC CPUs we run on
(~8 GFLOP/s, against ~25-35 for numpy's OpenBLAS on one thread); the network is ~1 MFLOP per token, mostly matrix
products, so the NER model here uses numpy's BLAS (``use_numpy_blas``), pinned to one thread while it runs
(``one_blas_thread``: one process stays on one core, worker processes do not oversubscribe). Where no OpenBLAS can
be found to pin, blis stays.

**Embeddings.** A token's embedding (four hashed lexeme features, then a maxout layer: a quarter of the network's
work) depends on nothing but those features; ``cache_embeddings`` computes it once per distinct feature row and
keeps the rows of words seen before (names, template words and the words around a tag recur across windows).

**Decoder.** ``greedy_ner`` drives spaCy's transition loop from Python, one vectorized step for all windows of a
batch, and picks and applies the actions in numpy (``_BiluoSteps``); spaCy's own C loop re-acquires the GIL for every
hidden unit of every step in the builds we use, and its validity check for every action of every token (see its
docstring), which made it slower than the network.
"""

from __future__ import annotations

import bisect
import ctypes
import re
from contextlib import contextmanager
from functools import lru_cache

from spacy.attrs import ENT_IOB, IDX, IS_SPACE, LENGTH, SENT_START, SPACY
from spacy.lang.en.stop_words import STOP_WORDS
from spacy.tokens import Doc, Span

from llm_pipeline.curation.pii_spans import TYPE_TAG as _TAG  # our replacement tags

NER_BEFORE, NER_AFTER = 4, 5  # tokens around a candidate word: the CNN's reach of 4, and 1 more after it
# A letter run starting with an ASCII capital or a non-ASCII letter (checked for upper case below).
_LETTERS = re.compile(r"(?<![^\W\d_])(?:[A-Z]|[^\W\d_a-z\x00-\x7f])[^\W\d_]*")


def candidate_offsets(text: str) -> list[int]:
    """Character offsets of the words NER must look around: capitalized and not a stop word, or an acronym. The
    capitals of our own replacement tags ("<PERSON>") are not candidates: a tag is no name, and NER reading one
    as part of a name ("<PERSON> deemed") only finds the words next to it."""
    out = []
    tags = [m.span() for m in _TAG.finditer(text)] if "<" in text else []
    tag_starts = [a for a, _ in tags]  # in order and disjoint: only the last tag starting before a word can hold it
    for m in _LETTERS.finditer(text):
        word = m.group()
        if word[0].isupper() and (word.lower() not in STOP_WORDS or sum(c.isupper() for c in word) > 1):
            if tags and (k := bisect.bisect_left(tag_starts, m.start()) - 1) >= 0 and m.start() < tags[k][1]:
                continue
            out.append(m.start())
    return out


def without_capitals(text: str, least_letters: int = 20) -> bool:
    """Whether `text` (our tags aside) has letters, at least `least_letters` of them, and none in upper case."""
    bare = _TAG.sub("", text) if "<" in text else text
    return bare == bare.lower() and sum(c.isalpha() for c in bare) >= least_letters


def ner_windows(token_starts: list[int], offsets: list[int], n_tokens: int, before: int = NER_BEFORE,
                after: int = NER_AFTER) -> list[tuple[int, int]]:
    """Merged (start, end) token windows from `before` tokens before to `after` tokens after the token holding each
    offset."""
    windows: list[tuple[int, int]] = []
    for off in offsets:
        i = bisect.bisect_right(token_starts, off) - 1
        lo, hi = max(0, i - before), min(n_tokens, i + after + 1)
        if windows and lo <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(hi, windows[-1][1]))
        else:
            windows.append((lo, hi))
    return windows


def token_table(doc: Doc, text: str) -> tuple[list[int], list[str], list[bool]]:
    """(start offsets, texts, trailing-space flags) of the tokens of `doc`, the tokenization of `text`, read from its
    arrays (building a spaCy Token object per token costs more than the rest of this). Kept with the document: the
    focus of a later pass, the windows and the context words read it."""
    table = doc.user_data.get(TOKEN_TABLE)
    if table is None:
        rows = doc.to_array([IDX, LENGTH, SPACY]).tolist()
        table = doc.user_data[TOKEN_TABLE] = ([r[0] for r in rows], [text[r[0] : r[0] + r[1]] for r in rows],
                                              [bool(r[2]) for r in rows])
    return table


TOKEN_TABLE = "pii_token_table"  # Doc.user_data key


# Entities of windows already read, by the window's words and spaces: a window is read as a document of its own, so
# the same tokens give the same entities wherever they stand. Templates, boilerplate lines and the parts of a text a
# later pass reads again repeat windows (12% of the tokens on presidio-research's synthetic set).
WINDOW_MEMO_SIZE = 50_000


def windowed_entities(ner, texts: list[str], docs: list[Doc], offsets: list[list[int]], batch_size: int,
                      memo: dict | None = None) -> list[list[Span]]:
    """Entities per document (`docs` tokenize `texts`) from one NER pass over the windows around its candidate words;
    `memo` (window -> its entities, as (start, end, label) in the window's tokens) skips windows read before."""
    memo = {} if memo is None else memo
    keys, owners, todo = [], [], {}
    for i, (text, doc, offs) in enumerate(zip(texts, docs, offsets)):
        if not offs:
            continue
        starts, words, spaces = token_table(doc, text)
        for lo, hi in ner_windows(starts, offs, len(doc)):
            key = (tuple(words[lo:hi]), tuple(spaces[lo:hi]))
            # Where the window stops at the document's edge its rows there are exact: part of what it reads.
            key = (key[0], key[1], lo == 0, hi == len(doc))
            if key not in memo and key not in todo:
                piece = todo[key] = Doc(doc.vocab, words=list(key[0]), spaces=list(key[1]))
                piece.user_data[EXACT_ROWS] = exact_rows(lo, hi, len(doc))
            keys.append(key)
            owners.append((i, lo))
    pieces = list(todo.values())
    with one_blas_thread():
        for b in range(0, len(pieces), batch_size):
            greedy_ner(ner, pieces[b : b + batch_size])
    # An entity that does not reach the exact rows was decided from vectors the window cuts short: not taken.
    fresh = {key: [(e.start, e.end, e.label) for e in piece.ents if _reaches(e, piece.user_data[EXACT_ROWS])]
             for key, piece in todo.items()}
    found: list[list[Span]] = [[] for _ in docs]
    for (i, lo), key in zip(owners, keys):
        ents = fresh[key] if key in fresh else memo[key]
        found[i].extend(Span(docs[i], lo + a, lo + b, label=label) for a, b, label in ents)
    if len(memo) + len(fresh) > WINDOW_MEMO_SIZE:
        memo.clear()
    memo.update(fresh)
    return found


def _reaches(entity: Span, rows: tuple[int, int]) -> bool:
    return entity.start < rows[1] and entity.end > rows[0]


def greedy_ner(ner, docs: list[Doc]) -> None:
    """Set NER entities on non-empty `docs`: what ``ner.pipe`` does, with the decoding loop driven from Python.

    spaCy's ``greedy_parse`` steps through the transitions in C without the GIL, but in the spaCy and thinc builds
    we use every maxout unit of every step re-acquires the GIL (a Cython exception/trace check inside
    ``thinc.linalg.Vec.arg_max``), which made decoding ~2.5x slower than the network itself. Here each step is one
    vectorized call for all states of the batch (the same hidden and output layers) with the GIL held, and the best
    valid action is picked and applied by ``_BiluoSteps`` in numpy: spaCy's own ``transition_states`` checks the 74
    actions' validity one C call at a time, each paying the same check (~6 us a token, 0.14 s of presidio-research's
    1,500 documents). The entities are the same (llm_pipeline_tests/curation/test_pii_ner.py)."""
    steps = _biluo_steps(ner)
    table = [doc.to_array([IS_SPACE, ENT_IOB, SENT_START]) for doc in docs] if steps is not None else []
    # Preset entities or sentence starts (never in the windows read here) make other actions valid: spaCy decides.
    if steps is None or any(t[:, 1].any() or (t[1:, 2] == 1).any() for t in table if len(t)):
        model = ner.model.predict(docs)
        states = ner.moves.init_batch(docs)
        active = [s for s in states if not s.is_final()]
        while active:
            active = ner.transition_states(active, model.predict(active))
        model.clear_memory()
        ner.set_annotations(docs, states)
        return
    model = ner.model.predict(docs)
    try:
        found = steps.decode(model, [len(doc) for doc in docs], [t[:, 0] for t in table])
    finally:
        model.clear_memory()
    for doc, ents in zip(docs, found):
        doc.set_ents([Span(doc, a, b, label=label) for a, b, label in ents], default="outside")


class _BiluoSteps:
    """spaCy's BILUO transition system for NER on documents without preset entities or sentence starts, a step for
    all documents at once: every action reads one token, so after step t each document is at its token t.

    The validity rules are spaCy's (``spacy/pipeline/_parser_internals/ner.pyx``) for such documents: B(egin) and
    I(n) need a token after this one, B and U(nit) a non-whitespace token and no open entity, I and L(ast) the open
    entity's label, O(ut) no open entity; the label-less U- is never valid. Which actions are valid depends only on
    (open entity's label or none, a token after this one, whitespace), so each combination's mask is computed once."""

    def __init__(self, names: list[str]):
        import numpy

        kinds = [n.split("-", 1)[0] for n in names]
        labels = [n.split("-", 1)[1] if "-" in n else "" for n in names]
        self.labels = sorted({lab for lab in labels if lab})
        code = {lab: k + 1 for k, lab in enumerate(self.labels)}  # 0: no label / no open entity
        self.kind = numpy.array(["BILUO".index(k) for k in kinds], dtype=numpy.int64)
        self.label = numpy.array([code.get(lab, 0) for lab in labels], dtype=numpy.int64)
        has = self.label > 0
        # penalty[(open label) * 4 + more * 2 + space]: 0 for a valid action, -inf for an invalid one
        self.penalty = numpy.full(((len(self.labels) + 1) * 4, len(names)), -numpy.inf, dtype="float32")
        for open_label in range(len(self.labels) + 1):
            for more in (0, 1):
                for space in (0, 1):
                    is_open, same = open_label > 0, self.label == open_label
                    valid = {0: has & (not is_open) & bool(more) & (not space), 1: has & is_open & bool(more) & same,
                             2: has & is_open & same, 3: has & (not is_open) & (not space),
                             4: numpy.full(len(names), not is_open)}
                    ok = numpy.zeros(len(names), dtype=bool)
                    for k, v in valid.items():
                        ok |= (self.kind == k) & v
                    self.penalty[open_label * 4 + more * 2 + space, ok] = 0.0

    def decode(self, model, lengths: list[int], spaces: list) -> list[list[tuple[int, int, str]]]:
        """(start, end, label) per document, from the ParserStepModel ``ner.model.predict(docs)`` made."""
        import numpy

        n = numpy.asarray(lengths, dtype=numpy.int64)
        offset = numpy.concatenate([[0], numpy.cumsum(n)[:-1]]).astype(numpy.int64)
        space = numpy.concatenate(spaces).astype(bool) if len(spaces) else numpy.zeros(0, dtype=bool)
        start = numpy.full(len(n), -1, dtype=numpy.int64)  # token (batch-wide) where the open entity starts
        open_label = numpy.zeros(len(n), dtype=numpy.int64)
        unseen = model._class_mask == 0
        found: list[tuple] = []
        active = numpy.flatnonzero(n > 0)  # in batch order, as spaCy's states: the same rows, the same products
        t = 0
        while len(active):
            b0 = offset[active] + t
            opened = start[active]
            is_open = opened >= 0
            ids = numpy.empty((len(active), 3), dtype=numpy.int32)  # the state's features: B(0), E(0), B(0)-1
            ids[:, 0] = b0
            ids[:, 1] = numpy.where(is_open, opened, -1)
            ids[:, 2] = numpy.where(is_open, b0 - 1, -1)
            scores = model.vec2scores.predict(model.state2vec.predict(ids)) if model.attrs["has_upper"] else \
                numpy.asarray(model.state2vec.predict(ids))
            if unseen.any():
                scores[:, unseen] = numpy.nanmin(scores)
            state = open_label[active] * 4 + (n[active] - t >= 2) * 2 + space[b0]
            guess = numpy.argmax(scores + self.penalty[state], axis=1)  # the first best, as spaCy's arg_max_if_valid
            kind, label = self.kind[guess], self.label[guess]
            begin, unit, last = kind == 0, kind == 3, kind == 2
            if unit.any():
                k = int(unit.sum())
                found += zip(active[unit].tolist(), [t] * k, [t + 1] * k, label[unit].tolist())
            if last.any():
                docs_ = active[last]
                found += zip(docs_.tolist(), (start[docs_] - offset[docs_]).tolist(), [t + 1] * len(docs_),
                             label[last].tolist())
                start[docs_] = -1
                open_label[docs_] = 0
            if begin.any():
                start[active[begin]] = b0[begin]
                open_label[active[begin]] = label[begin]
            t += 1
            active = active[n[active] > t]
        out: list[list[tuple[int, int, str]]] = [[] for _ in lengths]
        for i, a, b, label in sorted(found):
            out[i].append((a, b, self.labels[label - 1]))
        return out


def _biluo_steps(ner):
    """The numpy decoder for `ner`'s actions, or None where they (or its state features) are not the BILUO ones."""
    # Keyed by the actions' names, not by the pipe: a pipe (and the vocabulary its moves hold) must be freed when the
    # pipeline is loaded afresh (SharedPipeline.release_vocab).
    names = tuple(ner.moves.get_class_name(i) for i in range(ner.moves.n_moves))
    key = (names, ner.model.get_ref("lower").get_dim("nF"))
    if key not in _STEPS:
        ok = all(n == "O" or n[:2] in ("B-", "I-", "L-", "U-") for n in names) and "O" in names and key[1] == 3
        _STEPS[key] = _BiluoSteps(list(names)) if ok else None
    return _STEPS[key]


_STEPS: dict = {}


# ---------------------------------------------------------------- embeddings once per distinct token
EMBED_CACHE_SIZE = 50_000  # feature rows remembered (96 floats each: ~20 MB); the cache restarts when full


def cache_embeddings(model, size: int = EMBED_CACHE_SIZE) -> bool:
    """Make `model` (the NER component's thinc model, spaCy's ``parser_model``) embed each distinct row of token
    features once per batch, reusing the rows of earlier batches; returns whether its layout was the one expected
    (``extract_features >> list2ragged >> with_array(hash embeddings) >> with_array(maxout...) >> ragged2list``).

    The embedding of a row reads that row only, so the vectors are those of the full layer up to float rounding (the
    matrix product runs over fewer rows; at most 4e-6 apart on presidio-research's 1,500 documents, with the same
    entities: llm_pipeline_tests/curation/test_pii_ner.py). Training is left to the original layer."""
    from thinc.api import Model

    try:
        tok2vec = model.get_ref("tok2vec").layers[0]  # embed >> encode (the ref adds list2array >> linear)
        embed = tok2vec.layers[0]
        extract, _, hashed, mixed, _ = embed.layers
        hash_layer, mix_layer = hashed.layers[0], mixed.layers[0]
    except (KeyError, IndexError, ValueError):
        return False
    if not (extract.name == "extract_features" and hashed.name.startswith("with_array(") and embed.name.endswith("ragged2list")):
        return False
    # Feature row (as bytes) -> its row in `store`, the embeddings computed so far.
    cache: dict[bytes, int] = {}
    store: list = []  # [array (size, width)], allocated at the first batch

    def forward(layer, docs, is_train):
        if is_train:
            return embed(docs, is_train)
        import numpy

        feats = extract.predict(docs)
        lengths = [len(f) for f in feats]
        rows = numpy.ascontiguousarray(numpy.concatenate(feats)) if feats else numpy.zeros((0, 4), dtype="uint64")
        uniq, inverse = numpy.unique(rows, axis=0, return_inverse=True)
        uniq = numpy.ascontiguousarray(uniq)
        keys = uniq.view(numpy.dtype((numpy.void, uniq.shape[1] * uniq.itemsize))).ravel().tolist()  # one bytes a row
        todo = [k for k, key in enumerate(keys) if key not in cache]
        if len(cache) + len(todo) > size:  # full: start again with this batch's rows
            cache.clear()
            todo = list(range(len(keys)))
        width = embed.get_dim("nO")
        if todo:
            fresh = mix_layer.predict(hash_layer.predict(uniq[todo]))
            if not store or store[0].shape[0] < max(size, len(todo)):
                store[:] = [numpy.empty((max(size, len(todo)), width), dtype=fresh.dtype)]
            at = len(cache)
            store[0][at : at + len(todo)] = fresh
            cache.update(zip((keys[k] for k in todo), range(at, at + len(todo))))
        if not keys:
            return [numpy.zeros((0, width), dtype="float32") for _ in lengths], lambda d: d
        at = numpy.fromiter(map(cache.__getitem__, keys), dtype=numpy.intp, count=len(keys))
        out = store[0][at[inverse.reshape(-1)]]
        return numpy.split(out, numpy.cumsum(lengths)[:-1]) if lengths else [], lambda d: d

    # In place of the embedding layer (its sublayers keep their weights and ops: call use_numpy_blas first, whose
    # walk over the model no longer reaches them afterwards).
    tok2vec.layers[0] = Model("cached_embed", forward, dims={"nO": embed.get_dim("nO")})
    return True


# ---------------------------------------------------------------- the CNN only where a window's vectors are exact
EXACT_ROWS = "ner_exact_rows"  # Doc.user_data key: (start, end) of the window's tokens whose vectors must be exact


# The decoder's choice at a token reads that token's vector, the previous token's and the open entity's first one:
# the token on each side of the exact ones keeps the (cut-context) vector the whole window gives it, so that what the
# choices at the candidate and the token after it read is what it was without the pyramid (0 here changed the
# entities of 21 of presidio-research's 1,500 documents, 1 those of 11, with as many spans leaked either way).
DECISION_CONTEXT = 1


def exact_rows(lo: int, hi: int, n_tokens: int, reach: int = NER_BEFORE) -> tuple[int, int]:
    """(start, end) of the rows of window (lo, hi) of an `n_tokens` document whose vectors the CNN must compute in
    full: those with `reach` tokens of the window (or the document's own edge) on each side, whose vectors are the
    whole document's, and DECISION_CONTEXT more on each side."""
    start = 0 if lo == 0 else reach
    end = hi - lo if hi == n_tokens else max(hi - lo - reach, start)
    return max(0, start - DECISION_CONTEXT), min(hi - lo, end + DECISION_CONTEXT)


def pyramid_encoder(model) -> bool:
    """Make `model` (the NER component's thinc model) compute its CNN layers only on the rows the exact ones depend
    on, for windows that say which rows those are (``EXACT_ROWS`` in ``Doc.user_data``, set by ``windowed_entities``);
    returns whether its layout was the one expected (``embed >> with_array(residual(expand_window >> maxout >>
    layernorm >> dropout) x depth, pad=reach)``). Call after ``cache_embeddings``.

    A window's rows near its cut edges get wrong vectors anyway (their context is cut), and the decoder reads them
    only for what it decides there (the candidate and the token after it are exact by the windows' construction).
    Layer k of d needs (d - k) rows on each side of an exact row, so the last layer runs on the exact rows alone, the
    one before on one row more each side, and so on: for a lone candidate's 10-row window, 28 row-layers of 40 (on
    presidio-research's short documents, whose windows often reach a document's edge, 78% of them, pad rows
    included). The exact rows get the same vectors as before (llm_pipeline_tests/curation/test_pii_ner.py); the others get the
    output of the last layer that reached them, in place of the layers' output over a cut context, and the entities
    taken from a window are those that reach its exact rows (``windowed_entities``)."""
    import numpy
    from thinc.api import Model

    try:
        outer = model.get_ref("tok2vec").layers[0]  # embed >> encode
        embed, encode = outer.layers
        blocks = encode.layers[0].layers
        inner = [block.layers[0] for block in blocks]  # expand_window >> (maxout >> layernorm >> dropout)
        windows = {layer.layers[0].attrs.get("window_size") for layer in inner}
        pad = encode.attrs["pad"]
    except (KeyError, IndexError, ValueError, AttributeError):
        return False
    if not (encode.name.startswith("with_array(") and all(b.name.startswith("residual(") for b in blocks)
            and all(layer.layers[0].name == "expand_window" for layer in inner) and windows == {1}
            and pad == len(blocks)):
        return False
    steps = [layer.layers[1] for layer in inner]
    depth = len(blocks)

    def forward(layer, docs, is_train):
        if is_train:
            return outer(docs, is_train)
        Xs = embed.predict(docs)
        zones = [doc.user_data.get(EXACT_ROWS) for doc in docs]
        if all(z is None for z in zones) or not Xs:
            return encode.predict(Xs), lambda d: d
        lengths = [len(x) for x in Xs]
        flat = encode.ops.flatten(Xs, pad=pad)
        edged = numpy.zeros((len(flat) + 2, flat.shape[1]), dtype=flat.dtype)  # seq2col's zeros past either end
        X = edged[1:-1]  # a view: the layers update the rows in place
        X[:] = flat
        exact = numpy.zeros(len(X), dtype=bool)
        at = pad
        for n, zone in zip(lengths, zones):
            if n == 0:
                continue
            a, b = zone if zone is not None else (0, n)
            exact[at + a : at + b] = True
            at += n + pad
        for k, step in enumerate(steps):
            rows = numpy.flatnonzero(_dilate(exact, depth - 1 - k))
            if not len(rows):
                break
            cols = numpy.concatenate([edged[rows], edged[rows + 1], edged[rows + 2]], axis=1)
            X[rows] += step.predict(cols)
        return encode.ops.unflatten(X, numpy.asarray(lengths, dtype="int32"), pad=pad), lambda d: d

    model.get_ref("tok2vec").layers[0] = Model("pyramid_tok2vec", forward, dims={"nO": outer.get_dim("nO")})
    return True


def _dilate(mask, by: int):
    """`mask` with every True widened by `by` places each side."""
    out = mask.copy()
    for k in range(1, by + 1):
        out[k:] |= mask[:-k]
        out[:-k] |= mask[k:]
    return out


# ---------------------------------------------------------------- numpy's BLAS for the NER model, on one thread
@lru_cache(maxsize=1)
def openblas_threads():
    """(get, set) for the thread count of the OpenBLAS numpy loaded, or None where there is none to find."""
    import numpy  # noqa: F401 - loads the library looked for

    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:  # not Linux
        return None
    names = [("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),  # numpy's own wheels
             ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
             ("openblas_get_num_threads", "openblas_set_num_threads")]
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get, set_ in names:
            if hasattr(lib, get) and hasattr(lib, set_):
                getter, setter = getattr(lib, get), getattr(lib, set_)
                getter.restype, getter.argtypes, setter.argtypes = ctypes.c_int, [], [ctypes.c_int]
                return getter, setter
    return None


@contextmanager
def one_blas_thread():
    """Pin numpy's OpenBLAS to one thread for the duration (the previous count is restored after)."""
    blas = openblas_threads()
    if blas is None:
        yield
        return
    get, set_ = blas
    before = get()
    set_(1)
    try:
        yield
    finally:
        set_(before)


def use_numpy_blas(model) -> bool:
    """Make `model` (a thinc model, e.g. the NER component's) multiply with numpy's BLAS instead of blis, when that
    BLAS can be pinned to one thread; returns whether it switched."""
    from thinc.api import NumpyOps

    if openblas_threads() is None:
        return False
    ops = NumpyOps(use_blis=False)
    for node in model.walk():
        node.ops = ops
    return True


# ---------------------------------------------------------------- NER for languages other than the English model's
# spaCy labels of the common pipelines (OntoNotes-style and WikiNER-style) -> Presidio entities.
OTHER_LANGUAGE_LABELS = {"PER": "PERSON", "PERSON": "PERSON", "LOC": "LOCATION", "GPE": "LOCATION", "FAC": "LOCATION",
                         "ORG": "ORGANIZATION", "NORP": "NRP"}


@lru_cache(maxsize=4)
def other_language_pipeline(model: str):
    """A configured spaCy pipeline (package name or folder), loaded once per process."""
    import spacy

    return spacy.load(model)


def other_language_entities(model: str, texts: list[str]) -> list[list[tuple[int, int, str]]]:
    """(start, end, Presidio entity) per text from `model`'s entities (labels outside OTHER_LANGUAGE_LABELS are
    left out: MISC, dates, numbers)."""
    nlp = other_language_pipeline(model)
    return [[(e.start_char, e.end_char, OTHER_LANGUAGE_LABELS[e.label_]) for e in doc.ents if e.label_ in OTHER_LANGUAGE_LABELS]
            for doc in nlp.pipe(texts)]
