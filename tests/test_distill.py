"""L_distill: a frozen fixed-resolution teacher and 1 − cos to the student's pooled vector
(docs/design.md A2, B1.7, C8)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from viq.config import from_dict, override, to_dict
from viq.model.viq import ViQModel
from viq.model.vit import ViTEncoder
from viq.presets import tiny
from viq.supervision.config import TeacherConfig, tiny_teacher_encoder
from viq.supervision.distill import DistillSupervision, Teacher, build_teacher


def images(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) * 2 - 1 for h, w in [(40, 64), (32, 32), (17, 50)]]


CFG = TeacherConfig(image_size=32)


def test_teacher_frozen_fixed_resolution_and_stays_eval():
    parent = nn.ModuleDict({"distill": DistillSupervision(CFG, student_width=32)})
    teacher = parent["distill"].teacher
    assert isinstance(teacher, Teacher) and teacher.frozen
    parent.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    imgs = images()
    out = teacher(imgs)
    assert out.shape == (3, 32) and not out.requires_grad and out.dtype == torch.float32
    # = the encoder's pooled vector of the bilinear (align_corners=False, no antialias) resize
    x = [F.interpolate(i[None], size=(32, 32), mode="bilinear", align_corners=False)[0]
         for i in imgs]
    with torch.no_grad():
        torch.testing.assert_close(out, teacher.encoder(x, pool=True).pooled)
    # fixed resolution: an image and its 2× upsampling give nearly the same pooled vector
    big = F.interpolate(imgs[1][None], scale_factor=2, mode="nearest")[0]
    torch.testing.assert_close(teacher([big]), teacher([imgs[1]]), atol=0.2, rtol=0)


def test_loss_range_zero_at_teacher_and_gradients():
    torch.manual_seed(0)
    sup = DistillSupervision(CFG, student_width=32)
    assert sup.align is None  # equal widths: no alignment layer
    imgs = images()
    target = sup.teacher(imgs)
    assert float(sup(imgs, target.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(sup(imgs, -target)) == pytest.approx(2.0, abs=1e-6)
    student = torch.randn(3, 32, requires_grad=True)
    loss = sup(imgs, student)
    assert 0.0 <= float(loss.detach()) <= 2.0
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="student_pooled"):
        sup(imgs, torch.randn(2, 32))


def test_align_layer_for_other_teacher_width():
    cfg = dataclasses.replace(CFG, encoder=dataclasses.replace(tiny_teacher_encoder(), width=48,
                                                                heads=3))
    sup = DistillSupervision(cfg, student_width=32)
    assert isinstance(sup.align, nn.Linear) and sup.align.weight.shape == (48, 32)
    trainable = {n for n, p in sup.named_parameters() if p.requires_grad}
    assert trainable == {"align.weight", "align.bias"}
    student = torch.randn(3, 32, requires_grad=True)
    sup(images(), student).backward()
    assert sup.align.weight.grad.abs().sum() > 0 and student.grad.abs().sum() > 0
    assert all(p.grad is None for p in sup.teacher.parameters())


def test_student_from_viq_model_and_checkpoint_teacher(tmp_path):
    torch.manual_seed(0)
    model = ViQModel(tiny())
    model.save_pretrained(tmp_path / "ckpt")
    teacher = build_teacher(TeacherConfig(source=str(tmp_path / "ckpt"), image_size=32))
    for a, b in zip(teacher.encoder.state_dict().values(), model.encoder.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    sup = DistillSupervision(TeacherConfig(source=str(tmp_path / "ckpt"), image_size=32), 32)
    imgs = images()
    loss = sup(imgs, model(imgs, pool=True).pooled)
    loss.backward()
    assert 0 <= float(loss.detach()) <= 2
    assert model.encoder.attn_pool.latent.grad is not None


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_file_teacher_keeps_its_own_position_table(tmp_path, suffix):
    from safetensors.torch import save_file

    enc_cfg = dataclasses.replace(tiny_teacher_encoder(), pos_grid=4)  # native 64² at patch 16
    torch.manual_seed(0)
    original = ViTEncoder(enc_cfg).eval()
    state = {"visual.trunk." + k: v.contiguous() for k, v in original.state_dict().items()}
    path = tmp_path / f"open_clip{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    teacher = build_teacher(TeacherConfig(source=str(path), image_size=64, heads=2))
    assert teacher.encoder.cfg.pos_grid == 4
    assert torch.equal(teacher.encoder.pos_embed, original.pos_embed)
    imgs = images()
    x = [teacher.resize(i) for i in imgs]
    with torch.no_grad():
        torch.testing.assert_close(teacher(imgs), original(x, pool=True).pooled)


def test_config_round_trip_and_validation():
    cfg = TeacherConfig(source="random", image_size=64, dtype="bf16")
    assert from_dict(TeacherConfig, to_dict(cfg)) == cfg
    assert override(cfg, ["encoder.width=64", "image_size=384"]).encoder.width == 64
    with pytest.raises(ValueError, match="'teacher.image_size'"):
        TeacherConfig(image_size=0)
    with pytest.raises(FileNotFoundError, match="'teacher.source'"):
        build_teacher(TeacherConfig(source="/nonexistent/teacher"))
    bf = build_teacher(TeacherConfig(image_size=32, dtype="bf16"))
    assert bf(images()[:1]).dtype == torch.float32
