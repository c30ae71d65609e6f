import pytest
import torch
from testlib.extractors import TINY, write_ibot_checkpoint

from rl_benchmarks.models import create_extractor, iBOTViT
from rl_benchmarks.models.feature_extractors import WeightsError


def _tiny_ibot(path, **kw):
    return iBOTViT("vit_base", weights_path=path, img_size=32, **TINY, **kw)


def test_teacher_and_student_match_their_timm_models(ibot_ckpt):
    x = torch.randn(3, 3, 32, 32)
    teacher = _tiny_ibot(ibot_ckpt.path)
    student = _tiny_ibot(ibot_ckpt.path, encoder="student")
    with torch.no_grad():
        ref_t, ref_s = ibot_ckpt.teacher(x), ibot_ckpt.student(x)
    torch.testing.assert_close(teacher(x), ref_t, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(student(x), ref_s, atol=1e-6, rtol=1e-6)
    assert (teacher(x) - student(x)).abs().max() > 1e-3
    assert teacher.record()["encoder"] == "teacher" and student.encoder == "student"


def test_architecture_auto_reads_shape_and_default_is_teacher(ibot_ckpt):
    ext = iBOTViT("auto", weights_path=ibot_ckpt.path, num_heads=2)
    assert ext.feature_dim == 32 and len(ext.feature_extractor.blocks) == 2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ext(x), ibot_ckpt.teacher(x), atol=1e-6, rtol=1e-6)


def test_architecture_auto_needs_heads_for_a_non_standard_width(ibot_ckpt):
    """embed_dim 32 is no standard ViT width: the head count cannot be guessed (a wrong
    one would load and silently give other features), so it must be given."""
    from rl_benchmarks.models.feature_extractors.ibot_vit import standard_num_heads

    with pytest.raises(ValueError, match="num_heads"):
        iBOTViT("auto", weights_path=ibot_ckpt.path)
    assert [standard_num_heads(d) for d in (192, 384, 768, 1024)] == [3, 6, 12, 16]


def _edit(ckpt_path, tmp_path, fn):
    ck = torch.load(ckpt_path, weights_only=True)
    fn(ck["teacher"])
    out = tmp_path / "edited.pth"
    torch.save(ck, out)
    return out


def test_wrong_shape_is_an_error_naming_the_key(ibot_ckpt, tmp_path):
    def bad(sd):
        sd["backbone.blocks.1.mlp.fc1.weight"] = torch.zeros(64, 16)

    with pytest.raises(WeightsError, match=r"shape mismatch: blocks\.1\.mlp\.fc1\.weight"):
        _tiny_ibot(_edit(ibot_ckpt.path, tmp_path, bad))


def test_missing_key_is_an_error_naming_it(ibot_ckpt, tmp_path):
    def bad(sd):
        del sd["backbone.blocks.0.attn.proj.bias"]

    with pytest.raises(WeightsError, match=r"missing keys: blocks\.0\.attn\.proj\.bias"):
        _tiny_ibot(_edit(ibot_ckpt.path, tmp_path, bad))


def test_unknown_key_is_an_error_but_head_keys_are_ignored(ibot_ckpt, tmp_path):
    def bad(sd):
        sd["backbone.extra_token"] = torch.zeros(3)
        sd["head.projector.weight"] = torch.zeros(3)

    with pytest.raises(WeightsError, match=r"unexpected keys: extra_token, head\.projector\.weight"):
        _tiny_ibot(_edit(ibot_ckpt.path, tmp_path, bad))


def test_missing_encoder_and_missing_weights_are_errors(ibot_ckpt, tmp_path, monkeypatch):
    path = tmp_path / "only_student.pth"
    ck = torch.load(ibot_ckpt.path, weights_only=True)
    torch.save({"student": ck["student"], "optimizer": {"lr": 1}}, path)
    with pytest.raises(WeightsError, match="no 'teacher' entry"):
        _tiny_ibot(path)
    with pytest.raises(WeightsError, match="does not exist"):
        _tiny_ibot(tmp_path / "nope.pth")
    monkeypatch.setenv("RLB_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(WeightsError, match=r"ibot_vit_base_pancan\.pth.*pretrained=False"):
        iBOTViT()
    with pytest.raises(WeightsError, match="needs weights_path"):
        create_extractor("iBOTViTSmallCOAD")
    with pytest.raises(ValueError, match="architecture="):
        iBOTViT("vit_huge", pretrained=False)


def test_default_weights_path_under_data_dir(tmp_path, monkeypatch):
    weights = tmp_path / "data" / "weights"
    weights.mkdir(parents=True)
    write_ibot_checkpoint(weights / "ibot_vit_base_pancan.pth", img_size=32)
    monkeypatch.setenv("RLB_DATA_DIR", str(tmp_path / "data"))
    ext = create_extractor("phikon", img_size=32, **TINY)
    assert ext.name == "iBOTViTBasePANCAN"
    assert ext.record()["weights"] == str(weights / "ibot_vit_base_pancan.pth")


def test_random_init_needs_explicit_request():
    ext = iBOTViT("vit_small", pretrained=False, depth=1)
    assert ext.feature_dim == 384 and ext.record()["weights_sha256"] == "random-init"
    # LayerNorm eps as the reference ViT
    assert ext.feature_extractor.norm.eps == 1e-6
    assert ext.feature_extractor.blocks[0].norm1.eps == 1e-6
