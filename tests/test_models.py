"""The model stack: offline tokenizer, tiny configs, base-model build, load errors, SD 2.1."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fairdiffusion import models, tokenizer
from fairdiffusion.errors import FairDiffError

TINY = models.CONFIGS / "tiny"
# Every tiny architecture shipped (sd21 holds the paper's configs, not a tiny stack), and those
# that ship their own tokenizer files.
TINY_ARCHITECTURES = sorted(p.name for p in models.CONFIGS.iterdir()
                            if p.is_dir() and p.name != "sd21")
TOKENIZER_FOLDERS = sorted(p.parent.name for p in models.CONFIGS.glob("*/tokenizer"))

PROMPTS = [
    "SLO fundus image of a Black Female Non-Hispanic patient with the following conditions: "
    "glaucoma, moderate vision loss, borderline cup-disc ratio, negative",
    "Dermoscopic image of a Male Age equal 60 or older patient with the following diagnostic "
    "category: malignant",
    "Chest Radiography image of a Female Asian patient diagnosed with non Pleural Effusion",
    "",
]

TOKENIZE = """
import json, sys
from fairdiffusion import tokenizer
from transformers import CLIPTokenizer
tokenizer.write_files(sys.argv[1])
tok = CLIPTokenizer.from_pretrained(sys.argv[1])
print(json.dumps(tok(json.loads(sys.argv[2])).input_ids))
"""


@pytest.mark.parametrize("architecture", TOKENIZER_FOLDERS)
def test_shipped_tokenizer_files_are_the_generated_ones(tmp_path, architecture):
    tokenizer.write_files(tmp_path)
    folder = models.CONFIGS / architecture / "tokenizer"
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (tmp_path / name).read_text() == (folder / name).read_text(), name


@pytest.mark.parametrize("architecture", TINY_ARCHITECTURES)
def test_tiny_architecture_unet_takes_its_text_encoder_states(architecture):
    stack = models.build_tiny(architecture, 32)
    ids = stack["tokenizer"](PROMPTS[:2], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        states = stack["text_encoder"](ids)[0]
        out = stack["unet"](torch.randn(2, 4, 16, 16), torch.tensor([1, 500]),
                            encoder_hidden_states=states).sample
    assert states.shape == (2, stack["tokenizer"].model_max_length,
                            stack["unet"].config.cross_attention_dim)
    assert out.shape == (2, 4, 16, 16) and torch.isfinite(out).all()


def test_every_prompt_word_is_one_token():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(TINY / "tokenizer")
    for word in tokenizer.PROMPT_WORDS:
        ids = tok(word).input_ids
        assert len(ids) == 3, (word, tok.convert_ids_to_tokens(ids))
    # Unknown words fall back to bytes instead of failing.
    assert tok.decode(tok("zebra café", add_special_tokens=False).input_ids) == "zebra café"
    for prompt in PROMPTS:
        assert len(tok(prompt).input_ids) <= tok.model_max_length


def test_tokenizer_is_identical_across_processes_with_different_hash_seeds(tmp_path):
    outputs = []
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", TOKENIZE, str(tmp_path / hash_seed),
                              json.dumps(PROMPTS)], env=env, capture_output=True, text=True,
                             check=True)
        outputs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        assert (tmp_path / hash_seed / "vocab.json").read_text() == \
            (TINY / "tokenizer" / "vocab.json").read_text()
    assert outputs[0] == outputs[1]


def test_text_encoder_config_matches_tokenizer():
    from transformers import CLIPTextConfig, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(TINY / "tokenizer")
    config = CLIPTextConfig.from_pretrained(TINY / "text_encoder")
    assert config.vocab_size == len(tok)
    assert config.max_position_embeddings == tok.model_max_length
    assert config.eos_token_id == tok.eos_token_id
    assert config.bos_token_id == tok.bos_token_id


def test_tiny_stack_saves_as_a_stock_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    stack = models.build_tiny("tiny", 32)
    models.save_stack(stack, tmp_path / "base")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "base")
    assert type(pipe.tokenizer).__name__ == "CLIPTokenizer"
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    assert pipe.unet.config.sample_size * factor == 32
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    # The saved stack is reloaded component by component exactly as training and sampling do.
    unet = models.load(str(tmp_path / "base"), "unet")
    for name, value in stack["unet"].state_dict().items():
        assert torch.equal(unet.state_dict()[name], value), name


def test_missing_model_id_fails_with_its_name_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FairDiffError, match="no-such-org/no-such-model"):
        models.load("no-such-org/no-such-model", "unet")


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(FairDiffError, match="model_index.json"):
        models.load(str(tmp_path), "vae")


def test_unknown_architecture_is_refused():
    with pytest.raises(FairDiffError, match="tiny_architecture 'nope'"):
        models.build_tiny("nope", 32)


def test_vae_training_reduces_reconstruction_error():
    torch.manual_seed(0)
    stack = models.build_tiny("tiny", 32)
    rng = np.random.default_rng(0)
    images = np.zeros((8, 32, 32, 3), np.uint8)
    images[:, 8:24, 8:24] = rng.integers(100, 255, (8, 1, 1, 3))
    x = models.to_tensor(images)
    def error():
        recon = models.decode(stack["vae"], models.encode(stack["vae"], x))
        return float(torch.mean((recon - x) ** 2))

    before = error()
    losses = models.train_vae(stack["vae"], x, steps=40, batch_size=8, learning_rate=2e-3)
    after = error()
    assert all(np.isfinite(losses))
    assert after < before / 2


def text_encoder_task(n: int = 96):
    """Three prompts differing in one word, each with its own latent pattern (plus noise)."""
    prompts = [PROMPTS[0].replace("borderline", c) for c in ("normal", "borderline", "abnormal")]
    g = torch.Generator().manual_seed(0)
    rows = torch.arange(n) % 3
    latents = torch.randn(3, 4, 16, 16, generator=g)[rows] + 0.5 * torch.randn(n, 4, 16, 16,
                                                                             generator=g)
    return prompts, latents, [prompts[i] for i in rows]


def test_text_encoder_training_separates_prompts_that_differ_in_one_word():
    stack = models.build_tiny("tiny", 32)
    encoder, tok = stack["text_encoder"], stack["tokenizer"]
    prompts, latents, paired = text_encoder_task()
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length,
              return_tensors="pt").input_ids

    def most_similar_pair() -> float:
        """Largest cosine similarity between two different prompts' pooled states."""
        with torch.no_grad():
            pooled = torch.nn.functional.normalize(encoder(ids).pooler_output, dim=-1)
        return float((pooled @ pooled.T)[~torch.eye(3, dtype=bool)].max())

    # a random encoder barely tells the prompts apart: what the UNet had to learn through
    assert most_similar_pair() > 0.98
    losses = models.train_text_encoder(encoder, tok, latents, paired, steps=60, batch_size=32,
                                       learning_rate=2e-3)
    assert all(np.isfinite(losses)) and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert most_similar_pair() < 0.5
    assert not encoder.training


def test_text_encoder_training_is_deterministic():
    _, latents, paired = text_encoder_task()
    runs = []
    for _ in range(2):
        stack = models.build_tiny("tiny", 32)
        models.train_text_encoder(stack["text_encoder"], stack["tokenizer"], latents, paired,
                                  steps=3, batch_size=16, learning_rate=2e-3)
        runs.append(stack["text_encoder"].state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_base_model_trains_the_text_encoder_unless_its_steps_are_0(tmp_path, root):
    import yaml
    from transformers import CLIPTextModel

    from fairdiffusion.config import validate
    from fairdiffusion.data.prepare import prepare

    cfg = validate(yaml.safe_load((root / "config.yaml").read_text()))
    ds = cfg["datasets"]["synthfundus"]
    ds["synthetic"].update(n_train=16, n_val=4, n_test=4)
    prepare("synthfundus", ds, tmp_path / "data")
    untrained = models.build_tiny("tiny", 32)["text_encoder"].state_dict()
    for steps in (0, 3):
        model = {**cfg["model"], "vae": {"steps": 2, "batch_size": 8, "learning_rate": 2e-3},
                 "text_encoder": {"steps": steps, "batch_size": 8, "learning_rate": 2e-3}}
        out = tmp_path / f"base{steps}"
        models.build_base("synthfundus", ds, model, tmp_path / "data" / "manifest.csv", out)
        saved = CLIPTextModel.from_pretrained(out / "text_encoder").state_dict()
        unchanged = all(torch.equal(saved[k], untrained[k]) for k in untrained)
        assert unchanged == (steps == 0)
        loss = json.loads((out / "run_info.json").read_text())["settings"][
            "text_encoder_final_loss"]
        assert (loss is None) == (steps == 0)


def test_sd21_architecture_configs_instantiate_at_paper_size():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sd21 = models.CONFIGS / "sd21"
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sd21 / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(sd21 / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(sd21 / "text_encoder"))

    def millions(model):
        return sum(p.numel() for p in model.parameters()) / 1e6

    # Published sizes of Stable Diffusion 2.1: UNet 865.9M, VAE 83.7M, OpenCLIP-H text 340.4M.
    assert millions(unet) == pytest.approx(865.9, abs=0.1)
    assert millions(vae) == pytest.approx(83.65, abs=0.1)
    assert millions(text) == pytest.approx(340.4, abs=0.2)
    assert unet.config.cross_attention_dim == text.config.hidden_size == 1024
