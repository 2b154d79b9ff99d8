"""``stage.encoder_init``: the student encoder starts from pretrained weights (docs/design.md A2:
the stage-1 student is initialised from SigLIP2, the model its teacher is a fixed-resolution copy
of).

    viq train --preset paper_0.5b_stage1 \
        --set stage.encoder_init=/models/siglip2-giant-opt-patch16-384

The source is read like ``teacher.source`` (`viq.supervision.distill.build_teacher`): a viq model
folder (``ViQModel.save_pretrained``: its encoder — the demo starts its student from its own
miniature SigLIP this way), a Hugging Face SigLIP2 folder, or a timm/open_clip file. Every
encoder entry must be there with the student's shape, except the position table, which is
resampled to the student's ``pos_grid`` (bilinear, the rule the encoder itself uses,
`viq.model.vit.resize_pos_table`). Applied at a fresh start only: a resumed run loads its own
checkpoint, and a stage with ``init_from`` starts from the previous stage instead.
"""

from __future__ import annotations

import torch

from viq.model.vit import ViTEncoder, resize_pos_table


def init_encoder(encoder: ViTEncoder, source: str) -> str:
    """Copy the weights of ``source`` into ``encoder``; returns a one-line summary."""
    from viq.supervision.config import TeacherConfig
    from viq.supervision.distill import build_teacher

    where = "config field 'stage.encoder_init'"
    src = build_teacher(TeacherConfig(source=source)).encoder
    theirs, own = src.state_dict(), encoder.state_dict()
    missing = [k for k in own if k not in theirs]
    if missing:
        raise ValueError(f"{where}: {source} lacks {len(missing)} encoder entries the student "
                         f"needs, e.g. {', '.join(missing[:4])}")
    c = encoder.cfg.width
    resized = ""
    if theirs["pos_embed"].shape != own["pos_embed"].shape and theirs["pos_embed"].shape[-1] == c:
        g_src, g = src.cfg.pos_grid, encoder.cfg.pos_grid
        table = resize_pos_table(theirs["pos_embed"].reshape(-1, c).float(), g_src, g, g)
        theirs["pos_embed"] = table.reshape(1, g * g, c)
        resized = f", position table {g_src}² -> {g}²"
    shapes = [f"{k} {tuple(theirs[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if tuple(theirs[k].shape) != tuple(v.shape)]
    if shapes:
        raise ValueError(f"{where}: {source} is another architecture than the student encoder "
                         f"(model.encoder): {'; '.join(shapes[:3])}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(theirs[k].to(v.dtype))
    return f"encoder initialised from {source} ({len(own)} entries{resized})"
