"""The offline demo's pieces: the frozen parts ViQ needs, trained from scratch on the
synthetic VQA benchmark in minutes on a CPU.

- `viq.demo.vae.train_vae`: a small diffusers ``AutoencoderKL`` (8×, 16 latent channels) — the
  latent target of L_recon and the decoder of reconstructions — started from
  `viq.demo.vae_init.box_init`, an exact block-colour autoencoder.
- `viq.demo.teacher.train_teacher`: a miniature SigLIP — a small ViT with a MAP head trained with
  the sigmoid contrastive loss against frozen MiniLM sentence embeddings — the L_distill teacher.
- both checkpoint, resume and mark a finished run through `viq.train.checkpoint`.
"""
