"""The batched sampler on tiny models: HF equality, paging, prefix sharing, preemption,
stop strings, seeded sampling and batch invariance, next-token probabilities, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from tolerances import assert_as_accurate, assert_completion_logprobs_accurate, assert_greedy_matches_hf

from selftrain.models import load_model, load_tokenizer
from selftrain.sampler import Sampler
from selftrain.sampler.model import ModelArgs, rope_inv_freq

TINY = "tiny-random"
# Exact-equality tests across batch shapes sample at SHARP_T: tiny-random's next-token distribution
# at T ~ 1 spreads over ~15k tokens, so rounding-level logit differences between batch shapes
# (docs/sampler.md) move a CDF boundary across u every few hundred tokens; at 0.3 the top-0.9
# nucleus holds ~10 tokens and real sampling still happens.
SHARP_T = 0.3
PROMPTS = [
    "Hello there, how are",
    "The quick brown fox jumps over the lazy dog and then",
    "1 2 3",
    "What is 2+2? " * 6,
    "Once upon a time",
    "def f(x):\n    return",
    "Paris is the capital of",
    "a",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY)


@pytest.fixture(scope="module")
def hf():
    return load_model(TINY)


@pytest.fixture(scope="module")
def hf64(hf):
    """A float64 copy of the model: the 'truth' that fp32 comparisons measure their errors against."""
    return copy.deepcopy(hf).double()


@pytest.fixture(scope="module")
def sampler(hf, tok):
    return Sampler(hf, tokenizer=tok, kv_cache_tokens=4096)


def hf_greedy(model, tok, prompt, max_new):
    enc = tok(prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, enc["input_ids"].shape[1]:].tolist()


def test_greedy_matches_hf_generate_in_one_batch(sampler, hf, hf64, tok):
    outs = sampler.generate(PROMPTS, max_new_tokens=24)
    assert len(outs) == len(PROMPTS) and all(len(o) == 1 for o in outs)
    for prompt, (c,) in zip(PROMPTS, outs):
        assert_greedy_matches_hf(hf, hf64, tok(prompt)["input_ids"], c.token_ids, 24, tok.pad_token_id)
        assert c.finish_reason == "length"
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)


def test_logprobs_match_plain_forward(sampler, hf, hf64, tok):
    outs = sampler.generate(PROMPTS[:3], n=2, temperature=1.0, max_new_tokens=12, logprobs=True, seed=3)
    for prompt, samples in zip(PROMPTS[:3], outs):
        ids = tok(prompt)["input_ids"]
        for c in samples:
            assert_completion_logprobs_accurate(hf, hf64, ids, c.token_ids, c.logprobs)


def test_prefix_sharing_prefills_prompt_once(sampler):
    before = sampler.stats.prefill_tokens
    one = sampler.generate(PROMPTS, n=1, temperature=1.0, max_new_tokens=5)
    for_one = sampler.stats.prefill_tokens - before
    before, copies = sampler.stats.prefill_tokens, sampler.stats.cow_copies
    many = sampler.generate(PROMPTS, n=6, temperature=1.0, max_new_tokens=5)
    assert sampler.stats.prefill_tokens - before == for_one
    assert sampler.stats.cow_copies > copies  # partial last prompt blocks were copied on write
    # sample j's draws depend on (seed, i, j, step) only: sample 0 of n=6 is the n=1 sample
    assert [m[0].token_ids for m in many] == [o[0].token_ids for o in one]
    assert all(len(m) == 6 for m in many)


def test_n_samples_differ(sampler):
    outs = sampler.generate(PROMPTS[:2], n=5, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=1)
    for samples in outs:
        assert len({tuple(c.token_ids) for c in samples}) > 1
    again = sampler.generate(PROMPTS[:2], n=5, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=1)
    assert [[c.token_ids for c in s] for s in again] == [[c.token_ids for c in s] for s in outs]
    other = sampler.generate(PROMPTS[:2], n=5, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=2)
    assert [[c.token_ids for c in s] for s in other] != [[c.token_ids for c in s] for s in outs]


def test_preemption_with_tiny_pool_gives_same_results(hf, tok, sampler):
    kwargs = dict(n=3, temperature=SHARP_T, top_p=0.9, max_new_tokens=20, seed=5, logprobs=True)
    big = sampler.generate(PROMPTS[:4], **kwargs)
    small = Sampler(hf, tokenizer=tok, kv_cache_tokens=96, block_size=8, max_num_seqs=8)
    got = small.generate(PROMPTS[:4], **kwargs)
    assert small.stats.preemptions > 0
    assert [[c.token_ids for c in s] for s in got] == [[c.token_ids for c in s] for s in big]
    assert small.engine.blocks.num_free == small.config.num_blocks  # every block came back


def test_chunked_prefill_and_small_batches_change_nothing(hf, tok, sampler):
    kwargs = dict(n=2, temperature=SHARP_T, top_p=0.9, max_new_tokens=10, seed=11)
    ref = sampler.generate(PROMPTS, **kwargs)
    chunked = Sampler(hf, tokenizer=tok, kv_cache_tokens=4096, max_num_seqs=3, max_num_batched_tokens=5)
    got = chunked.generate(PROMPTS, **kwargs)
    assert [[c.token_ids for c in s] for s in got] == [[c.token_ids for c in s] for s in ref]


def test_decode_batches_respect_max_num_seqs_with_n_samples(hf, tok):
    # leaders bring n - 1 siblings after their prefill: those seats count before more leaders join
    s = Sampler(hf, tokenizer=tok, kv_cache_tokens=4096, max_num_seqs=8)
    sizes = []
    real_run = s.engine.runner.run

    def spy(batch):
        sizes.append(len(batch.items))
        return real_run(batch)

    s.engine.runner.run = spy
    outs = s.generate(PROMPTS, n=4, temperature=SHARP_T, max_new_tokens=6, seed=1)
    assert all(len(o) == 4 for o in outs) and max(sizes) <= 8, sizes
    assert max(sizes) == 8  # and the limit is used


def test_batch_invariance(sampler):
    kwargs = dict(n=3, temperature=SHARP_T, top_p=0.9, max_new_tokens=8, seed=7)
    target = "The quick brown fox jumps over the lazy dog and then"
    alone = sampler.generate([target], **kwargs)[0]
    crowd = [target] + [f"filler prompt number {k} " * (k % 5 + 1) for k in range(24)]
    among = sampler.generate(crowd, **kwargs)[0]
    assert [c.token_ids for c in among] == [c.token_ids for c in alone]
    # the same prompt index in two different batches draws the same numbers too
    a = sampler.generate(PROMPTS, **kwargs)
    b = sampler.generate([PROMPTS[0], "x y z", PROMPTS[2], "other", PROMPTS[4]], **kwargs)
    for k in (0, 2, 4):
        assert [c.token_ids for c in a[k]] == [c.token_ids for c in b[k]]


def test_top_k_reaches_the_engine(sampler):
    # top_k=1 at a flat temperature is greedy; top-k 20 draws only among each step's 20 largest logits
    kwargs = dict(n=2, temperature=1.5, max_new_tokens=6, seed=3)
    greedy = sampler.generate(PROMPTS[:3], max_new_tokens=6)
    top1 = sampler.generate(PROMPTS[:3], top_k=1, **kwargs)
    assert [[c.token_ids for c in row] for row in top1] == [[g[0].token_ids] * 2 for g in greedy]
    free = sampler.generate(PROMPTS[:3], **kwargs)
    assert [[c.token_ids for c in row] for row in free] != [[c.token_ids for c in row] for row in top1]
    (row,) = sampler.generate([PROMPTS[0]], n=4, top_k=20, temperature=1.5, max_new_tokens=1, seed=5)
    probs = sampler.next_token_probs([PROMPTS[0]], list(range(sampler.model.args.vocab_size)))[0]
    top20 = set(torch.tensor(probs).topk(20).indices.tolist())
    assert all(c.token_ids[0] in top20 for c in row)


def test_stop_strings_cut_text(sampler):
    (full,), = sampler.generate([PROMPTS[1]], max_new_tokens=20)
    text = full.text
    assert len(text) > 12
    stop = text[8:12]
    first = text.find(stop)
    (cut,), = sampler.generate([PROMPTS[1]], max_new_tokens=20, stop=[stop, "zzzz-never"])
    assert cut.finish_reason == "stop"
    assert cut.text == text[:first]
    assert full.token_ids[: len(cut.token_ids)] == cut.token_ids
    assert len(cut.token_ids) < len(full.token_ids)


def test_eos_stops_and_is_kept_in_token_ids(hf, tok):
    s = Sampler(hf, tokenizer=tok, kv_cache_tokens=1024)
    (ref,), = s.generate([PROMPTS[0]], max_new_tokens=10)
    eos = ref.token_ids[4]
    s.engine.eos_ids = {eos}
    (c,), = s.generate([PROMPTS[0]], max_new_tokens=10)
    assert c.finish_reason == "stop"
    assert c.token_ids == ref.token_ids[: ref.token_ids.index(eos) + 1]
    assert c.text == tok.decode(c.token_ids[:-1], skip_special_tokens=True)


def test_token_id_prompts_and_next_token_probs(sampler, hf, hf64, tok):
    ids = [tok(p)["input_ids"] for p in PROMPTS[:3]]
    by_ids = sampler.generate(ids, max_new_tokens=6)
    by_text = sampler.generate(PROMPTS[:3], max_new_tokens=6)
    assert [o[0].token_ids for o in by_ids] == [o[0].token_ids for o in by_text]
    cands = [" the", " Correct", 17]
    probs = sampler.next_token_probs(PROMPTS[:3], cands)
    for prompt, row in zip(PROMPTS[:3], probs):
        enc = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            p = torch.softmax(hf(**enc).logits[0, -1].float(), -1)
            p64 = torch.softmax(hf64(**enc).logits[0, -1], -1)
        first_ids = [tok.encode(c, add_special_tokens=False)[0] if isinstance(c, str) else c for c in cands]
        # probabilities: relative errors, so each is compared on the scale of its own size
        truth = p64[first_ids]
        ratio, ref_ratio = torch.tensor(row, dtype=torch.float64) / truth, p[first_ids] / truth
        assert_as_accurate(ratio, ref_ratio, torch.ones_like(ratio), scale=1.0)
    per_prompt = sampler.next_token_probs(PROMPTS[:2], [[" a"], [" b", " c"]])
    assert [len(r) for r in per_prompt] == [1, 2]
    assert sampler.next_token_probs([], [" a"]) == []


def test_bad_input(sampler):
    assert sampler.generate([]) == []
    with pytest.raises(ValueError, match=r"n must be an int >= 1"):
        sampler.generate(["a"], n=0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        sampler.generate(["a"], top_p=0.0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        sampler.generate(["a"], top_p=1.5)
    with pytest.raises(ValueError, match=r"temperature must be >= 0"):
        sampler.generate(["a"], temperature=-0.1)
    with pytest.raises(ValueError, match=r"top_k must be an int >= 0"):
        sampler.generate(["a"], top_k=-1)
    too_long = [5] * sampler.max_model_len
    with pytest.raises(ValueError, match=r"prompt 1 has \d+ tokens, longer than"):
        sampler.generate(["fine", too_long], max_new_tokens=2)
    (c,), = sampler.generate([too_long], max_new_tokens=2, truncate_prompts=True)
    assert len(c.token_ids) == 2
    with pytest.raises(ValueError, match=r"prompt 0 is empty"):
        sampler.generate([[]])
    with pytest.raises(TypeError, match=r"prompt 0"):
        sampler.generate([3.5])
    with pytest.raises(ValueError, match=r"kv_cache_tokens"):
        Sampler(TINY, kv_cache_tokens=32).generate(["hello"], max_new_tokens=100)


def test_unsupported_architecture_is_named(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel"):
        Sampler(model, tokenizer=tok)


def _tiny(config_cls, model_cls, **extra):
    cfg = config_cls(vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     tie_word_embeddings=False, initializer_range=0.2, **extra)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return model_cls(cfg).eval()


@pytest.mark.parametrize("family", ["qwen2", "mistral", "llama3-rope"])
def test_other_families_match_hf(family, tok):
    import transformers as tf

    if family == "qwen2":
        model = _tiny(tf.Qwen2Config, tf.Qwen2ForCausalLM)  # q/k/v biases
        g = torch.Generator().manual_seed(1)  # the same model whatever ran before
        with torch.no_grad():
            for layer in model.model.layers:  # HF initialises biases to zero: make them matter
                layer.self_attn.q_proj.bias.normal_(0, 0.5, generator=g)
                layer.self_attn.k_proj.bias.normal_(0, 0.5, generator=g)
    elif family == "mistral":
        model = _tiny(tf.MistralConfig, tf.MistralForCausalLM, sliding_window=4096)
    else:
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
        model = _tiny(tf.LlamaConfig, tf.LlamaForCausalLM, rope_parameters=rope)
        hf_inv, _ = tf.modeling_rope_utils.ROPE_INIT_FUNCTIONS["llama3"](model.config)
        assert torch.allclose(rope_inv_freq(ModelArgs.from_hf_config(model.config)), hf_inv)
    s = Sampler(model, tokenizer=tok, kv_cache_tokens=2048)
    prompts = ["a b c d e f g", PROMPTS[3]]  # the second one passes position 32
    outs = s.generate(prompts, max_new_tokens=30)
    model64 = copy.deepcopy(model).double()
    for prompt, (c,) in zip(prompts, outs):
        assert_greedy_matches_hf(model, model64, tok(prompt)["input_ids"], c.token_ids, 30, tok.pad_token_id)


def test_progress_bar_reports_sequences(sampler, capsys):
    sampler.generate(PROMPTS[:2], n=2, max_new_tokens=3, progress=True)
    err = capsys.readouterr().err
    assert "sampling" in err and "4/4" in err
