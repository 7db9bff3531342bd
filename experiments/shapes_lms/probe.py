"""Held-out perplexity and linear probes of the Shapes language models (configs/lm_shapes.py).

    python experiments/shapes_lms/probe.py --workdir=runs/shapes_lms/llama --workdir=runs/shapes_lms/t5 \
        --out=experiments/shapes_lms/results_validation.json              # model selection: validation only
    ... --test   # once, at the end: also the test split

For each workdir (its config.json, its latest checkpoint) and for a random initialisation of the same
architecture (the method's own init, seed config.seed: the "random T5" of the ELLA experiment is the T5 row):

Perplexity, per caption kind (dense / short / narrative at 80 / 20 / 100 tokens), on every caption of the split:
  Llama  exp(mean NLL of every token after [BOS], [EOS] included): next-token perplexity.
  T5     exp(mean NLL of the span-corruption targets "<extra_id_i> span_i ... [EOS]"), corruption drawn with a
         fixed key per batch (the same noise for every model): denoising perplexity, not comparable to Llama's.

Linear probe of each object in a narrative caption: the frozen model's last hidden state (Llama: after the final
norm; T5: the encoder's; = `load_text_encoder` of the export) mean-pooled over the tokens of the object's phrase
("<size> thing <shape phrase>, <colour phrase>", its character span from the Shapes annotations); a closed-form
ridge regression on one-hot targets (features standardised on the probe's train set, argmax decision) for colour
(6 classes), shape (3) and size (2). Trained on the objects of the first --probe_train train scenes, the ridge
strength chosen per attribute on the validation scenes, test accuracy reported with --test. Reference rows: the
majority class of the probe's train set, and a bag-of-words probe (counts of the phrase's word ids: what a
linear reader of the words alone recovers).
Two harder probes, the same ridge: "last" reads each object from the state at the *last* token of its phrase
alone (the final word of its colour phrase, e.g. "banana": its shape and size are words earlier in the phrase, so
they are there only if the model carries context into that token), and "first" reads the attributes of the object
mentioned first from the whole caption's mean-pooled state (binding: the caption names 1-4 objects).
Results go to --out (JSON) and are printed as Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.data import shapes
from t2ijax.data.pipeline import load_split
from t2ijax.data.tokenizer import CaptionTokenizer, spans_to_token_mask
from t2ijax.train.sampling import config_from_workdir, load_for_inference

KINDS = {"dense": 80, "short": 20, "narrative": 100}
ATTRIBUTES = {"colour": shapes.COLOURS, "shape": shapes.SHAPES, "size": shapes.SIZES}
LAMBDAS = [10.0 ** k for k in range(-3, 5)]
BATCH = 200


def records(data_config, split: str, n: int | None = None) -> list[dict]:
    source = load_split(data_config, split)
    n = len(source) if n is None else min(n, len(source))
    out = []
    for i in range(n):
        row = source[i]
        text = {k: (row[k].decode() if isinstance(row[k], bytes) else str(row[k])) for k in KINDS}
        graph = json.loads(row["scene_graph"].decode() if isinstance(row["scene_graph"], bytes) else row["scene_graph"])
        out.append({**text, "graph": graph, "n": int(row["num_objects"])})
    return out


def batches(n: int, size: int = BATCH):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def pad_rows(a: np.ndarray, size: int) -> np.ndarray:
    if len(a) == size:
        return a
    return np.concatenate([a, np.zeros((size - len(a), *a.shape[1:]), a.dtype)])


def perplexities(method, params, rows: list[dict]) -> dict:
    nll = jax.jit(method.nll)
    out = {}
    for kind, length in KINDS.items():
        encode = CaptionTokenizer(method.tokenizer, length)
        total, count = 0.0, 0.0
        for b, (s, e) in enumerate(batches(len(rows))):
            tok = [encode(r[kind]) for r in rows[s:e]]
            ids = pad_rows(np.stack([t["input_ids"] for t in tok]), BATCH)
            mask = pad_rows(np.stack([t["attention_mask"] for t in tok]), BATCH)  # padded rows: no tokens
            key = jax.random.fold_in(jax.random.PRNGKey(1234), b)
            sm, cnt = nll(params, jnp.asarray(ids), jnp.asarray(mask), key)
            total, count = total + float(sm), count + float(cnt)
        out[kind] = {"perplexity": math.exp(total / count), "nll": total / count, "tokens": int(count)}
    return out


def object_examples(method, rows: list[dict]):
    """Per object: (ids, mask, phrase token mask, caption index, labels); and per caption the first object's labels."""
    encode = CaptionTokenizer(method.tokenizer, KINDS["narrative"])
    ids, masks, phrase, owner, labels = [], [], [], [], {a: [] for a in ATTRIBUTES}
    words = []
    for i, r in enumerate(rows):
        tok = encode(r["narrative"], return_offsets=True)
        ids.append(tok["input_ids"])
        masks.append(tok["attention_mask"])
        spans = r["graph"]["spans"]["narrative"]["objects"]
        for k in range(r["n"]):
            m = spans_to_token_mask(tok["offsets"], [spans[k]])
            if m.sum() == 0:
                continue
            phrase.append(m)
            owner.append(i)
            obj = r["graph"]["objects"][k]
            for a, classes in ATTRIBUTES.items():
                labels[a].append(classes.index(obj[a]))
            words.append(tok["input_ids"][m > 0])
    first = {a: np.asarray([ATTRIBUTES[a].index(r["graph"]["objects"][0][a]) for r in rows]) for a in ATTRIBUTES}
    return (np.stack(ids), np.stack(masks), np.stack(phrase), np.asarray(owner),
            {a: np.asarray(v) for a, v in labels.items()}, words, first)


def pooled_features(method, params, ids, masks, phrase, owner):
    """(objects, D) phrase-mean-pooled, (objects, D) at the phrase's last token and (captions, D) caption-mean-
    pooled last hidden states."""
    feats = jax.jit(method.features)
    states = []
    for s, e in batches(len(ids)):
        h = feats(params, jnp.asarray(pad_rows(ids[s:e], BATCH)), jnp.asarray(pad_rows(masks[s:e], BATCH)))
        states.append(np.asarray(h, np.float32)[: e - s])
    states = np.concatenate(states)  # (captions, L, D)
    w = phrase / phrase.sum(1, keepdims=True)
    objects = np.einsum("nl,nld->nd", w, states[owner])
    last = phrase.shape[1] - 1 - np.argmax(phrase[:, ::-1] > 0, axis=1)
    last_token = states[owner, last]
    m = masks.astype(np.float32)
    captions = np.einsum("nl,nld->nd", m / m.sum(1, keepdims=True), states)
    return objects, last_token, captions


def bag_of_words(words, vocab: int) -> np.ndarray:
    out = np.zeros((len(words), vocab), np.float32)
    for i, w in enumerate(words):
        np.add.at(out[i], w, 1.0)
    return out


def ridge_probe(x_train, y_train, evals: dict, num_classes: int, select: str = "validation") -> dict:
    """Closed-form ridge on standardised features with centred one-hot targets; lambda (relative to the number
    of training rows) chosen on `select`; accuracy on every split of `evals` ({split: (x, y)})."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    xt = (x_train - mu) / sd
    y = np.eye(num_classes)[y_train]
    ym = y.mean(0)
    gram, rhs = xt.T @ xt, xt.T @ (y - ym)
    best = None
    for lam in LAMBDAS:
        w = np.linalg.solve(gram + lam * len(xt) * 1e-3 * np.eye(len(gram)), rhs)

        def acc(x, labels):
            return float(np.mean(np.argmax(((x - mu) / sd) @ w + ym, 1) == labels))

        scores = {split: acc(x, labels) for split, (x, labels) in evals.items()}
        if best is None or scores[select] > best["accuracy"][select]:
            best = {"lambda": lam, "accuracy": scores}
    return best


def probe_rows(objects, last_token, captions, attribute_labels, first_labels, splits):
    out = {}
    for a, classes in ATTRIBUTES.items():
        out[f"object_{a}"] = ridge_probe(objects["train"], attribute_labels["train"][a],
                                         {s: (objects[s], attribute_labels[s][a]) for s in splits}, len(classes))
        if last_token is not None:
            out[f"last_{a}"] = ridge_probe(last_token["train"], attribute_labels["train"][a],
                                           {s: (last_token[s], attribute_labels[s][a]) for s in splits}, len(classes))
        if captions is not None:
            out[f"first_{a}"] = ridge_probe(captions["train"], first_labels["train"][a],
                                            {s: (captions[s], first_labels[s][a]) for s in splits}, len(classes))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", action="append", required=True)
    p.add_argument("--probe_train", type=int, default=5000, help="train scenes for the probe's fit")
    p.add_argument("--test", action="store_true", help="also score the test split (once, at the end)")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    splits = ["validation", "test"] if args.test else ["validation"]
    results = {"splits": splits, "probe_train_scenes": args.probe_train, "models": {}}
    cache = {}
    for workdir in args.workdir:
        config = config_from_workdir(workdir)
        data_key = json.dumps(config.data.to_dict(), sort_keys=True)
        if data_key not in cache:
            t = time.time()
            cache[data_key] = {s: records(config.data, s, args.probe_train if s == "train" else None)
                               for s in ["train", *splits]}
            print(f"[probe] read {', '.join(f'{s} {len(v)}' for s, v in cache[data_key].items())} scenes "
                  f"({time.time() - t:.0f}s)", flush=True)
        rows = cache[data_key]
        trained = load_for_inference(config, workdir)
        random = load_for_inference(config, random_init=True)
        method = trained[0]
        arch = "llama" if method.objective == "causal" else "t5"
        examples = {s: object_examples(method, rows[s]) for s in rows}
        attribute_labels = {s: examples[s][4] for s in rows}
        first_labels = {s: examples[s][6] for s in rows}
        # reference rows, from the labels and the words alone
        ref = {}
        for a, classes in ATTRIBUTES.items():
            majority = np.bincount(attribute_labels["train"][a], minlength=len(classes)).argmax()
            first_majority = np.bincount(first_labels["train"][a], minlength=len(classes)).argmax()
            ref[f"object_{a}"] = {"accuracy": {s: float(np.mean(attribute_labels[s][a] == majority)) for s in splits}}
            ref[f"last_{a}"] = ref[f"object_{a}"]
            ref[f"first_{a}"] = {"accuracy": {s: float(np.mean(first_labels[s][a] == first_majority)) for s in splits}}
        bow = {s: bag_of_words(examples[s][5], method.vocab_size) for s in rows}
        results["models"]["majority class"] = ref
        results["models"]["bag of words (phrase)"] = probe_rows(bow, None, None, attribute_labels, first_labels,
                                                                splits)
        for label, (m, params, _, _) in ((f"{arch} trained", trained), (f"{arch} random init", random)):
            t = time.time()
            entry = {"perplexity": {s: perplexities(m, params, rows[s]) for s in splits}}
            objects, last_token, captions = {}, {}, {}
            for s in rows:
                ids, masks, phrase, owner = examples[s][:4]
                objects[s], last_token[s], captions[s] = pooled_features(m, params, ids, masks, phrase, owner)
            entry["probe"] = probe_rows(objects, last_token, captions, attribute_labels, first_labels, splits)
            entry["workdir"] = workdir
            results["models"][label] = entry
            print(f"[probe] {label}: {time.time() - t:.0f}s", flush=True)
        # the export gives the probed features (when `t2ijax convert` wrote it)
        folder = os.path.join(workdir, "export", arch)
        if os.path.isdir(folder):
            from t2ijax.weights import load_text_encoder

            module, loaded = load_text_encoder(folder)
            ids, masks = examples[splits[0]][0][:8], examples[splits[0]][1][:8]
            a = np.asarray(method.features(trained[1], jnp.asarray(ids), jnp.asarray(masks)))
            b = np.asarray(module.apply({"params": loaded}, jnp.asarray(ids), jnp.asarray(masks)))
            results["models"][f"{arch} trained"]["export_max_abs_diff"] = float(np.abs(a - b).max())
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    print(markdown(results))


def markdown(results) -> str:
    splits = results["splits"]
    lines = ["| model | split | " + " | ".join(f"ppl {k}" for k in KINDS) + " |", "|---|---|" + "---|" * len(KINDS)]
    for name, entry in results["models"].items():
        for s in splits:
            if "perplexity" in entry:
                lines.append(f"| {name} | {s} | " + " | ".join(f"{entry['perplexity'][s][k]['perplexity']:.3f}"
                                                               for k in KINDS) + " |")
    cols = [f"{p}_{a}" for p in ("object", "last", "first") for a in ATTRIBUTES]
    lines += ["", "| model | split | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, entry in results["models"].items():
        probe = entry.get("probe", entry)
        for s in splits:
            cells = [f"{probe[c]['accuracy'][s]:.3f}" if c in probe else "-" for c in cols]
            lines.append(f"| {name} | {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
