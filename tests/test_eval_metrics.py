"""FID, CLIP score, CompBench-style accuracy, reports, grids and the end-to-end `evaluate`."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from t2ijax.data import shapes
from t2ijax.data.pipeline import default_data_config
from t2ijax.eval import dpg
from t2ijax.eval.clip_score import clip_score, clip_score_from_embeddings
from t2ijax.eval.compbench import compbench_scores
from t2ijax.eval.evaluate import evaluate, load_generated
from t2ijax.eval.fid import feature_statistics, fid, frechet_distance
from t2ijax.eval.grid import save_grid
from t2ijax.eval.report import write_report


def _rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    d1, d2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    q = _rotation(d, 1)
    s1, s2 = q @ np.diag(d1) @ q.T, q @ np.diag(d2) @ q.T  # commuting covariances
    closed = np.sum((mu1 - mu2) ** 2) + np.sum(d1 + d2 - 2 * np.sqrt(d1 * d2))
    got = frechet_distance(mu1, s1, mu2, s2)
    print(f"\nFID commuting Gaussians: {got:.10f} vs closed form {closed:.10f}")
    assert got == pytest.approx(closed, rel=1e-9)
    # 1-D: (m1 - m2)^2 + (sd1 - sd2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # general (non-commuting) covariances against scipy's sqrtm
    from scipy.linalg import sqrtm
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-7)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(mu1, s1, mu2[:3], s2)


def test_fid_with_encoder():
    rng = np.random.default_rng(0)
    encoder = lambda x: x.reshape(len(x), -1)[:, :6].astype(np.float64)  # noqa: E731
    a = rng.normal(size=(400, 4, 4, 3))
    b = rng.normal(loc=0.5, size=(400, 4, 4, 3))
    assert fid(a, a, encoder, batch_size=64) == pytest.approx(0.0, abs=1e-8)
    mu_a, s_a = feature_statistics(encoder(a))
    mu_b, s_b = feature_statistics(encoder(b))
    assert fid(a, b, encoder, batch_size=50) == pytest.approx(frechet_distance(mu_a, s_a, mu_b, s_b))
    assert 6 * 0.25 * 0.7 < fid(a, b, encoder) < 6 * 0.25 * 1.5


def test_clip_score():
    image_emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    text_emb = np.array([[1.0, 1.0], [-1.0, 0.0], [0.0, 5.0]])
    scores = clip_score_from_embeddings(image_emb, text_emb)
    np.testing.assert_allclose(scores, [100 / np.sqrt(2), 0.0, 100.0])
    images = np.stack([np.full((2, 2, 3), v) for v in (1.0, 2.0, 3.0)])
    table = {"a": [1.0, 1.0], "b": [-1.0, 0.0], "c": [0.0, 5.0]}
    got = clip_score(images, ["a", "b", "c"], lambda x: image_emb[(x[:, 0, 0, 0] - 1).astype(int)],
                     lambda t: np.array([table[s] for s in t]), batch_size=2)
    assert got == pytest.approx((100 / np.sqrt(2) + 100) / 3)


def test_compbench_categories():
    examples = [shapes.make_example(0, "test", i, 32) for i in range(12)]
    graphs = [ex.scene.to_graph() for ex in examples]
    perfect = compbench_scores(graphs, [[ex.image] for ex in examples])
    assert all(v["question"] == 100.0 for v in perfect.values() if v["num_questions"])
    # swapping every colour for the next palette colour breaks colour binding but not counts
    recoloured = []
    for ex in examples:
        img = ex.image.copy()
        for i, o in enumerate(ex.scene.objects):
            nxt = shapes.COLOURS[(shapes.COLOURS.index(o.colour) + 1) % len(shapes.COLOURS)]
            img[ex.masks[i] > 0] = shapes.PALETTE[nxt]
        recoloured.append([img])
    broken = compbench_scores(graphs, recoloured)
    print("\nCompBench on recoloured renders:", {k: round(v["question"], 1) for k, v in broken.items()})
    assert broken["count"]["question"] == 100.0 and broken["binding"]["question"] < 50.0


def test_report_and_grid(tmp_path):
    paths = write_report({"dpg_score": 71.25, "l1": {"entity": 80.0}, "cat": {"colour": {"question": 50.0}},
                          "nan": float("nan"), "arr": np.arange(3)}, str(tmp_path))
    data = json.load(open(paths["json"]))
    assert data["dpg_score"] == 71.25 and data["nan"] is None and data["arr"] == [0, 1, 2]
    md = open(paths["markdown"]).read()
    assert "| dpg_score | 71.25 |" in md and "| entity | 80.00 |" in md and "| colour | 50.00 |" in md
    images = [np.full((32, 32, 3), 40 * k, np.uint8) for k in range(5)]
    captions = ["a very long prompt " * 12] + [f"prompt {k}" for k in range(1, 5)]
    path = save_grid(images, captions, str(tmp_path / "g" / "grid.png"), cols=3)
    grid = np.asarray(Image.open(path))
    assert grid.shape[1] == 3 * (128 + 4) + 4 and grid.shape[0] > 2 * 128
    # the caption area under the first image holds dark text pixels
    assert (grid[4 + 128 + 4:4 + 128 + 30, 4:4 + 128] < 100).any()
    with pytest.raises(ValueError, match="captions"):
        save_grid(images, captions[:2], str(tmp_path / "x.png"))


def test_evaluate_shapes_end_to_end(tmp_path):
    cfg = default_data_config(num_test=6, seed=5, caption="dense")
    renders = {}
    for i in range(6):
        ex = shapes.make_example(5, "test", i, 32)
        renders[ex.captions["dense"]] = ex.image

    calls = []

    def oracle(prompts, seeds):
        calls.append(len(prompts))
        return np.stack([renders[p] / 127.5 - 1.0 for p in prompts])

    blank = lambda prompts, seeds: np.full((len(prompts), 32, 32, 3), 255, np.uint8)  # noqa: E731
    good = evaluate(oracle, benchmark="shapes", out_dir=str(tmp_path / "good"), data_config=cfg, batch_size=5)
    bad = evaluate(blank, benchmark="shapes", out_dir=str(tmp_path / "bad"), data_config=cfg)
    print(f"\nShapes benchmark: oracle DPG {good['dpg_score']:.1f}, blank DPG {bad['dpg_score']:.1f}")
    assert good["dpg_score"] == 100.0 and bad["dpg_score"] < 10.0
    assert all(v["question"] == 100.0 for v in good["compbench"].values() if v["num_questions"])
    assert good["per_prompt"]["0"]["seeds"] == [0, 1, 2, 3]
    assert calls == [5] * 5  # 24 images in full batches of 5, the last one padded
    for name in ("report.json", "report.md", "grid.png", "images.npz"):
        assert os.path.exists(tmp_path / "good" / name)
    # what rebuilds the scenes and the images is recorded; the images are saved for re-judging
    report = json.load(open(tmp_path / "good" / "report.json"))
    assert report["split"] == "test" and report["seed"] == 0
    assert report["data"] == {"seed": 5, "resolution": 32, "caption": "dense"}
    assert report["dpg_protocol"].startswith("fixed") and report["dpg_options"]["last_tile_categories"] is False
    generated = load_generated(str(tmp_path / "good"))
    assert generated["images"].shape == (6, 4, 32, 32, 3) and generated["images"].dtype == np.uint8
    assert generated["seeds"].dtype == np.int64 and generated["seeds"][1].tolist() == [4, 5, 6, 7]
    assert generated["prompts"] == [shapes.make_example(5, "test", i, 32).captions["dense"] for i in range(6)]
    np.testing.assert_array_equal(generated["images"][2, 1], renders[generated["prompts"][2]])


def test_shapes_category_scores_use_every_image(tmp_path):
    """Shapes defaults to DPGOptions.fixed(): category scores pool all 4 images of a prompt, where the official
    DPG-Bench quirk takes the last image only."""
    cfg = default_data_config(num_test=3, seed=5, caption="dense")
    examples = [shapes.make_example(5, "test", i, 32) for i in range(3)]
    renders = {ex.captions["dense"]: ex.image for ex in examples}
    blank = np.full((32, 32, 3), 255, np.uint8)

    def last_image_blank(prompts, seeds):  # image k of a prompt has seed 4p + k
        return np.stack([blank if s % 4 == 3 else renders[p] for p, s in zip(prompts, seeds)])

    def run(name, sampler, **kw):
        return evaluate(sampler, benchmark="shapes", out_dir=str(tmp_path / name), data_config=cfg, **kw)

    good = run("good", lambda prompts, seeds: np.stack([renders[p] for p in prompts]))
    bad = run("bad", lambda prompts, seeds: np.stack([blank] * len(prompts)))
    mixed = run("mixed", last_image_blank)
    official = run("official", last_image_blank, dpg_options=dpg.DPGOptions.official())
    assert official["dpg_protocol"].startswith("official")
    for category in good["dpg_l2"]:
        assert mixed["dpg_l2"][category] == pytest.approx((3 * good["dpg_l2"][category] + bad["dpg_l2"][category]) / 4)
        assert official["dpg_l2"][category] == pytest.approx(bad["dpg_l2"][category])


def test_evaluate_shapes_validation_split_for_tuning(tmp_path):
    cfg = default_data_config(num_val=3, num_test=2, seed=5, caption="dense")
    renders = {}
    for i in range(3):
        ex = shapes.make_example(5, "validation", i, 32)
        renders[ex.captions["dense"]] = ex.image
    oracle = lambda prompts, seeds: np.stack([renders[p] for p in prompts])  # noqa: E731
    out = evaluate(oracle, benchmark="shapes", out_dir=str(tmp_path / "val"), data_config=cfg, split="validation")
    assert out["split"] == "validation" and out["num_prompts"] == 3 and out["dpg_score"] == 100.0
    with pytest.raises(ValueError, match="'test' or 'validation'"):
        evaluate(oracle, benchmark="shapes", out_dir=str(tmp_path / "x"), data_config=cfg, split="train")
    with pytest.raises(ValueError, match="exceeds the test split size 2"):
        evaluate(oracle, benchmark="shapes", out_dir=str(tmp_path / "x"), data_config=cfg, num_prompts=3)


def test_evaluate_dpg_prompts(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    sampler = lambda prompts, seeds: rng.integers(0, 256, (len(prompts), 16, 16, 3), dtype=np.uint8)  # noqa: E731
    out = evaluate(sampler, benchmark="dpg", out_dir=str(tmp_path / "a"), num_prompts=3)
    assert out["scored"] is False and len(os.listdir(out["grid_dir"])) == 3
    # without the CSV and a VQA the report says so, and how to score the grids
    assert "no question CSV" in out["not_scored_because"] and "no VQA function" in out["not_scored_because"]
    assert any("compute_dpg_bench.py" in line and "--pic-num 4" in line and "--resolution 16" in line
               for line in out["how_to_score"])
    markdown = open(out["report"]["markdown"]).read()
    assert "## Not scored" in markdown and "--vqa=" in markdown
    assert json.load(open(out["report"]["json"]))["scored"] is False
    assert load_generated(str(tmp_path / "a"))["images"].shape == (3, 4, 16, 16, 3)
    ids = [p["id"] for p in dpg.load_prompts()[:3]]
    assert Image.open(os.path.join(out["grid_dir"], f"{ids[0]}.png")).size == (32, 32)
    csv_path = tmp_path / "dpg_bench.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(dpg.CSV_COLUMNS)
        for item in ids:
            for pid in (1, 2):
                w.writerow([item, "p", "k", pid, "0", "entity", "entity - whole", "entity - whole (x)", f"q{pid} {item}?"])
    # the VQA named as module:function, as --vqa does
    (tmp_path / "scripted_vqa.py").write_text(
        "def answer(tile, q):\n    return 'yes' if q.startswith('q1') else 'no'\n\nNOT_CALLABLE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    scored = evaluate(sampler, benchmark="dpg", out_dir=str(tmp_path / "b"), num_prompts=3, dpg_csv=str(csv_path),
                      vqa="scripted_vqa:answer")
    # official: the first prompt lost its first question (quirk 2) -> 0/1; the others 1/2
    assert scored["scored"] is True and scored["dpg_score"] == pytest.approx(100 * (0 + 0.5 + 0.5) / 3)
    assert scored["dpg_protocol"].startswith("official") and scored["vqa"] == "scripted_vqa:answer"
    # bad inputs fail before anything is sampled
    never = lambda prompts, seeds: pytest.fail("sampled before checking the inputs")  # noqa: E731
    for vqa, message in (("scripted_vqa", "expected module:function"), ("no_such_module:f", "cannot import"),
                         ("scripted_vqa:missing", "has no attribute 'missing'"),
                         ("scripted_vqa:NOT_CALLABLE", "not a callable")):
        with pytest.raises(ValueError, match=message):
            evaluate(never, benchmark="dpg", out_dir=str(tmp_path / "c"), dpg_csv=str(csv_path), vqa=vqa)
    with pytest.raises(FileNotFoundError, match="dpg_csv=.*no such file"):
        evaluate(never, benchmark="dpg", out_dir=str(tmp_path / "c"), dpg_csv=str(tmp_path / "nope.csv"),
                 vqa="scripted_vqa:answer")
    with pytest.raises(ValueError, match="apply to benchmark='dpg'"):
        evaluate(never, benchmark="shapes", out_dir=str(tmp_path / "c"), vqa="scripted_vqa:answer")


def test_clip_score_parity_with_transformers(tmp_path):
    """CLIP score through our Flax CLIP (public loader) vs the transformers CLIPModel, tiny random weights."""
    import torch
    import transformers as T

    from t2ijax.data.tokenizer import CaptionTokenizer, load_tokenizer
    from t2ijax.eval.clip_score import clip_embedders, clip_pixels

    torch.manual_seed(0)
    config = T.CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=80, eos_token_id=2, bos_token_id=1,
                         pad_token_id=0),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=16)
    model = T.CLIPModel(config).eval()
    model.save_pretrained(tmp_path / "clip")
    examples = [shapes.make_example(0, "test", i, 64) for i in range(4)]
    images = np.stack([ex.image for ex in examples])
    captions = [ex.captions["short"] for ex in examples][::-1] + [examples[0].captions["short"]]
    images = np.concatenate([images, images[:1]])
    image_embed, text_embed = clip_embedders(str(tmp_path / "clip"), tokenizer="shapes_word", max_length=24)
    ours_img, ours_txt = image_embed(images), text_embed(captions)

    encode = CaptionTokenizer(load_tokenizer("shapes_word", 24), 24)
    ids = np.stack([encode(c)["input_ids"] for c in captions]).astype(np.int64)
    mask = np.stack([encode(c)["attention_mask"] for c in captions]).astype(np.int64)
    pixels = torch.from_numpy(clip_pixels(images, 32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        ref_img = model.get_image_features(pixel_values=pixels)
        ref_txt = model.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        ref_img = getattr(ref_img, "pooler_output", ref_img).numpy()
        ref_txt = getattr(ref_txt, "pooler_output", ref_txt).numpy()
    for name, ours, ref in (("image", ours_img, ref_img), ("text", ours_txt, ref_txt)):
        err = np.max(np.abs(ours - ref))
        print(f"\nCLIP {name} features: max|ours - ref| = {err:.3e} (tolerance {1e-4 * np.max(np.abs(ref)):.3e})")
        assert err <= 1e-4 * np.max(np.abs(ref))
    ref_cos = torch.nn.functional.cosine_similarity(torch.from_numpy(ref_img), torch.from_numpy(ref_txt)).numpy()
    ours_cos = np.sum(ours_img * ours_txt, -1) / np.linalg.norm(ours_img, axis=-1) / np.linalg.norm(ours_txt, axis=-1)
    np.testing.assert_allclose(ours_cos, ref_cos, atol=1e-5)
    for sign in (1.0, -1.0):  # random weights give negative cosines; the flipped text features exercise max(cos, 0)
        ours_score = clip_score(images, captions, image_embed, lambda t: sign * text_embed(t))
        ref_score = float(np.mean(100 * np.maximum(sign * ref_cos, 0)))
        print(f"CLIP score (text sign {sign:+.0f}): ours {ours_score:.6f}, transformers {ref_score:.6f}")
        assert abs(ours_score - ref_score) <= 1e-3
