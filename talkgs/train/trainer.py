"""The one generic trainer: runs the stages of a FitConfig in order, resumably.

Everything stage-specific (what is rendered, the loss) lives in ``talkgs.train.stages``; this loop
owns sampling, optimisers, densification, logging, validation and checkpoints. A checkpoint holds
every piece of state the loop has (parameters, Adam moments, strategy statistics, both random
generators), so ``--resume`` continues an interrupted run exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

import talkgs
from talkgs.audio.config import AudioConfig
from talkgs.data import schema
from talkgs.data.cache import open_cache
from talkgs.data.frames import SubjectFrames, expression_track
from talkgs.data.schema import Label
from talkgs.data.subject import Subject, torso_layer
from talkgs.errors import TalkgsError
from talkgs.model.fitted import FittedModel, Replay, encode_layer, header_for, longest_run
from talkgs.model.gaussians import GaussianModel
from talkgs.model.init_head import initial_points, mouth_points
from talkgs.model.losses import psnr, ssim
from talkgs.model.mouth_code import load_prior, same_recording
from talkgs.model.talking_head import TalkingHead
from talkgs.train.checkpoint import load_checkpoint, save_checkpoint
from talkgs.train.config import FitConfig, StageConfig
from talkgs.train.context import FitContext
from talkgs.train.selfcheck import appearance, check_and_mend
from talkgs.train.stages import STAGES
from talkgs.train.strategy import make_strategy
from talkgs.utils import log, media
from talkgs.utils.camera import scale_intrinsics
from talkgs.utils.config import from_dict, load_yaml, save_yaml, to_dict
from talkgs.utils.threads import CORES


def _optimizers(model: GaussianModel | None, names: tuple[str, ...], networks: list[torch.nn.Module],
                cfg: StageConfig, scene_scale: float) -> dict[str, torch.optim.Adam]:
    # One Adam per trained Gaussian parameter (``names``), as gsplat's strategies expect (they resize
    # each one's moments), and one for all the networks the stage trains.
    out = {}
    if model is not None:
        lrs = {"means": cfg.lr.means * scene_scale, "scales": cfg.lr.scales, "quats": cfg.lr.quats,
               "opacities": cfg.lr.opacities, "sh0": cfg.lr.sh0, "shN": cfg.lr.shN}
        out = {k: torch.optim.Adam([{"params": [p], "lr": lrs[k], "name": k}], eps=1e-15)
               for k, p in model.params.items() if k in names}
    params = [p for net in networks for p in net.parameters()]
    if params:
        out["networks"] = torch.optim.Adam(params, lr=cfg.lr.network)
    return out


def fitted_model(subject: Subject, cfg: FitConfig, frames: SubjectFrames, head: TalkingHead) -> FittedModel:
    """The one-file fitted model of ``head`` (``talkgs.model.fitted``), with its replay data and layers
    taken from ``subject`` (``frames``: the subject at the fit's resolution)."""
    size = cfg.model_layer_size or cfg.resolution
    cache = frames.cache if size == frames.resolution else open_cache(subject, size)
    clear = subject.train_indices
    if "occluded" in subject.signals:  # replayed frames show no hand in front of the face or the torso
        clear = clear[subject.signals["occluded"][clear] == 0]
    run = longest_run(clear if len(clear) else subject.train_indices, subject.cuts)
    if len(run) > cfg.replay_frames:  # the middle of a long run
        start = (len(run) - cfg.replay_frames) // 2
        run = run[start:start + cfg.replay_frames]
    def layer(i: int) -> bytes:
        return encode_layer(torso_layer(np.array(cache.frames[i]), np.array(cache.labels[i]), cfg.neck_extension,
                                        frames.layer_background))

    # OpenCV's encoder releases the GIL: WebP lossless costs about 40 ms a 256-px layer, so the cores share it.
    with ThreadPoolExecutor() as pool:
        torso = dict(zip((int(i) for i in run), pool.map(layer, run)))
    plate = cv2.resize(subject.background, (size, size), interpolation=cv2.INTER_AREA)
    expression = expression_track(subject, tuple(cfg.head.expression)).astype(np.float32).astype(np.float64)
    train = subject.train_indices
    replay = Replay(w2c=subject.w2c, expression=expression, train=train, cuts=subject.cuts,
                    pivot=subject.template.mean(0), expression_open=np.median(expression[train], axis=0),
                    expression_closed=np.percentile(expression[train], 1, axis=0))
    audio_dim = frames.features.shape[-1] if frames.features is not None else 1
    header = header_for(head, audio_dim=audio_dim, fps=subject.fps, resolution=cfg.resolution, layer_size=size,
                        K=scale_intrinsics(subject.K, size / subject.size),
                        audio=subject.meta.get("config", {}).get("audio", {}), backend=cfg.backend, device=cfg.device,
                        source=subject.root.resolve().name, draws=STAGES[cfg.stages[-1].name].draws(),
                        neck_extension=cfg.neck_extension, layer_background=frames.layer_background)
    return FittedModel(head, header, replay, encode_layer(plate), torso)


def speech_prior(subject: Subject, head: TalkingHead) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Other speakers' (evidence, codes in ``subject``'s basis) for ``head``'s speech model when ``head.code.prior``
    asks for them, without any clip that is the subject's own recording."""
    cfg = head.cfg
    if not cfg.code.prior:
        return None
    layer = int(subject.meta["config"]["audio"].get("whisper_layer", AudioConfig.whisper_layer))
    try:
        clips = load_prior(subject.fps, tuple(cfg.audio_encoders), layer)
    except ValueError as e:
        log.warn(f"{e}: the speech model is fitted on the subject alone")
        return None
    # A subject filmed in one of the prior's clips would count those frames twice and train on its held-out ones.
    shared = [e for e in ("whisper", "visemes") if e in subject.audio_encoders]
    if shared:
        own = np.asarray(subject.audio_features(shared[0]))
        keep = [not same_recording(own, e) for e, _ in load_prior(subject.fps, (shared[0],), layer)]
        if not all(keep):
            log.info(f"speech model: left out {keep.count(False)} prior clip(s) recorded from the subject's own video")
        clips = [c for c, k in zip(clips, keep) if k]
    log.info(f"speech model: the subject's frames pooled with {sum(len(e) for e, _ in clips)} frames of "
             f"{len(clips)} other clips (head.code.prior)")
    return [(torch.from_numpy(e), head.mouth_code.transfer_mouth(m)) for e, m in clips]


def fit_speech(head: TalkingHead, features: torch.Tensor, columns: dict[str, slice], codes: torch.Tensor, train,
               prior: list[tuple[torch.Tensor, torch.Tensor]] | None) -> None:
    """Solve ``head``'s speech model from the evidence ``features`` [F, 2, D] (``columns``: each encoder's part of
    D) of the ``train`` frames to their tracked ``codes`` [F, C], with ``prior`` (``speech_prior``)."""
    visemes = columns.get("visemes")
    with torch.no_grad():
        opening = head.mouth_code.opening(codes)
    head.speech.fit(features, codes, torch.as_tensor(train), prior=prior, opening=opening,
                    visemes_column=None if visemes is None else visemes.start)


@torch.no_grad()
def speech_report(head: TalkingHead, features: torch.Tensor, codes: torch.Tensor, train, test) -> dict:
    """How well speech predicts the tracked mouth: correlation of the predicted and tracked inner-lip opening on
    the held-out (``test``) and the ``train`` frames, and the code error beside a still mouth's. ``features``
    [F, 2, D] and tracked ``codes`` [F, C] of every frame."""
    pred = head.speech(features, torch.arange(features.shape[0], device=features.device)).cpu()
    codes = codes.cpu()
    a, b = head.mouth_code.opening(pred).numpy(), head.mouth_code.opening(codes).numpy()
    corr = lambda idx: round(float(np.corrcoef(a[idx], b[idx])[0, 1]), 3)  # noqa: E731
    report = {"components": int(codes.shape[1]), "opening_corr_test": corr(test), "opening_corr_train": corr(train),
              "rmse_test": round(float(((pred[test] - codes[test]) ** 2).mean().sqrt()), 3),
              "rmse_test_still": round(float((codes[test] ** 2).mean().sqrt()), 3)}
    log.info(f"speech -> mouth code: held-out opening correlation {report['opening_corr_test']}, code rmse "
             f"{report['rmse_test']} (still mouth {report['rmse_test_still']})")
    return report


class Trainer:
    def __init__(self, subject_dir: str | Path, cfg: FitConfig, resume: bool = False, force: bool = False):
        self.subject = Subject(subject_dir)
        self.root = self.subject.root
        if cfg.resolution > self.subject.size:
            # Training above the subject's own size would fit Gaussians to interpolated pixels, at a higher cost; the
            # saved config says what ran, so eval, render and view rebuild the same fit.
            log.info(f"training at the subject's own {self.subject.size} px, not {cfg.resolution} px")
            cfg = dataclasses.replace(cfg, resolution=self.subject.size)
        self.cfg = cfg
        self.resume = resume
        fit = self.root / schema.FIT_DIR
        ckpt = self.root / schema.CHECKPOINT
        if resume:
            if not ckpt.is_file():
                raise TalkgsError(f"nothing to resume in {fit}: no checkpoint (start with talkgs fit without --resume)")
            saved = from_dict(FitConfig, load_yaml(self.root / schema.FIT_CONFIG))
            if to_dict(saved) != to_dict(cfg):
                raise TalkgsError("the config differs from the interrupted run's; resume without --config and "
                                  "overrides, or start again with --force")
        elif (ckpt.exists() or (self.root / schema.MODEL).exists()) and not force:
            raise TalkgsError(f"{self.root} is already fitted or a fit was interrupted; pass --resume to continue "
                              "it or --force to start again")
        fit.mkdir(exist_ok=True)
        save_yaml(to_dict(cfg), self.root / schema.FIT_CONFIG)
        (self.root / schema.VAL_DIR).mkdir(exist_ok=True)

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        ctx = FitContext(self.subject, cfg)
        self.ctx = ctx
        gen = torch.Generator().manual_seed(cfg.seed)
        report: dict = {"stages": {}}
        #: The static head's face appearance (``selfcheck.appearance``), kept when a stage without motion ends.
        self.static: dict[str, torch.Tensor] | None = None
        ckpt = load_checkpoint(self.root / schema.CHECKPOINT, ctx.device) if self.resume else None
        audio_dim = ctx.features.shape[-1] if ctx.features is not None else 1
        if ckpt is not None:
            head = TalkingHead.from_tensors(ckpt["model"], audio_dim, cfg.head).to(ctx.device)
            gen.set_state(ckpt["sampler"])
            torch.set_rng_state(ckpt["rng"])
            report = json.loads(ckpt["report"])
            self.static = ckpt.get("static_face") or None
            first_stage, first_step = int(ckpt["stage_index"]), int(ckpt["step"])
            log.info(f"resuming stage {cfg.stages[first_stage].name if first_stage < len(cfg.stages) else 'end'} "
                     f"at step {first_step}")
        else:
            head = self._initial_head(ctx, audio_dim).to(ctx.device)
            first_stage, first_step = 0, 0
        if cfg.head.drive == "code":
            ctx.codes = head.mouth_code.encode(self.subject.canonical_landmarks).to(ctx.device)
            report.setdefault("mouth_code", speech_report(head, ctx.features, ctx.codes, ctx.mouth_train_indices,
                                                              ctx.test_indices))
        for k in range(first_stage, len(cfg.stages)):
            stage_cfg = cfg.stages[k]
            resume_state = ckpt if (ckpt is not None and k == first_stage and first_step > 0) else None
            report["stages"][stage_cfg.name] = self._run_stage(k, stage_cfg, head, gen, report,
                                                               first_step if resume_state else 0, resume_state)
        checks = {name: r["self_check"] for name, r in report["stages"].items() if "self_check" in r}
        if checks:
            passed = all(c["passed"] for c in checks.values())
            report["self_check"] = {"passed": passed, "stages": list(checks)}
            if not passed:
                last = checks[list(checks)[-1]]
                log.warn(f"self-check failed: {last['over_after']} of {last['frames']} held-out frames keep a blotch "
                         f"(local error up to {last['worst_after']:.3f}) after mending; see {schema.FIT_REPORT}: "
                         "self_check")
        model = fitted_model(self.subject, cfg, ctx, head)
        model.save(self.root / schema.MODEL, float16=cfg.model_float16)
        report.update({"talkgs_version": talkgs.__version__, "device": str(ctx.device), "resolution": cfg.resolution,
                       "gaussians": head.face.num_gaussians, "mouth_gaussians": head.mouth.num_gaussians,
                       "model_mb": round((self.root / schema.MODEL).stat().st_size / 2**20, 2)})
        (self.root / schema.FIT_REPORT).write_text(json.dumps(report, indent=1))
        return report

    def _initial_head(self, ctx: FitContext, audio_dim: int) -> TalkingHead:
        cfg = self.cfg
        picks = ctx.train_indices[np.linspace(0, len(ctx.train_indices) - 1, cfg.init.init_frames).round().astype(int)]
        frames = [np.array(ctx.cache.frames[i]) for i in picks]
        labels = [np.array(ctx.cache.labels[i]) for i in picks]
        w2cs = [self.subject.w2c[i] for i in picks]
        K = ctx.K.cpu().numpy().astype(np.float64)
        pts, rgb = initial_points(self.subject.template, frames, labels, w2cs, K, cfg.init, cfg.seed)
        face = GaussianModel.from_points(torch.from_numpy(pts), torch.from_numpy(rgb), sh_degree=cfg.sh_degree,
                                         init_opacity=cfg.init.init_opacity,
                                         scale_multiplier=cfg.init.scale_multiplier)
        # The mouth cavity, coloured from the frames where the mouth is widest open.
        train = ctx.mouth_train_indices
        widest = train[np.argsort(ctx.mouth_open[train])[-cfg.init.init_frames:]]
        eye_width = float(np.linalg.norm(self.subject.template[263] - self.subject.template[33]))
        open_m = float(np.percentile(ctx.mouth_open[train], 95)) * eye_width
        mp, mrgb = mouth_points(self.subject.template, cfg.head.mouth_points, open_m, cfg.head.mouth_depth_m,
                                [np.array(ctx.cache.frames[i]) for i in widest], [self.subject.w2c[i] for i in widest],
                                K, np.random.default_rng(cfg.seed + 1))
        mouth = GaussianModel.from_points(torch.from_numpy(mp), torch.from_numpy(mrgb), sh_degree=cfg.sh_degree,
                                          init_opacity=cfg.init.init_opacity,
                                          scale_multiplier=cfg.init.scale_multiplier)
        log.info(f"{face.num_gaussians} initial face Gaussians, {mouth.num_gaussians} mouth Gaussians")
        head = TalkingHead(face, mouth, audio_dim, cfg.head)
        if ctx.features is not None:
            train_t = torch.as_tensor(train, device=ctx.device)
            head.set_input_stats(ctx.features[train_t].cpu(), ctx.expression[train_t].cpu())
        if cfg.head.drive == "code":
            canonical = self.subject.canonical_landmarks
            train = ctx.mouth_train_indices
            kept = head.mouth_code.fit(canonical[train])
            log.info(f"mouth code: {cfg.head.code.components} components keep {100 * kept:.1f} % of the lip and "
                     "jaw movement of the training frames")
            features = ctx.require_audio("the mouth code's speech model").cpu()
            fit_speech(head, features, ctx.feature_columns, head.mouth_code.encode(canonical), train,
                       speech_prior(self.subject, head))
        return head

    def _checkpoint(self, stage_index: int, step: int, head: TalkingHead, optimizers, strategy_state,
                    gen: torch.Generator, report: dict, elapsed: float = 0.0) -> None:
        save_checkpoint(self.root / schema.CHECKPOINT, {
            "stage_index": stage_index, "step": step, "elapsed": elapsed, "model": head.tensors(),
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()} if optimizers else {},
            "strategy": strategy_state or {},
            "sampler": gen.get_state(), "rng": torch.get_rng_state(), "report": json.dumps(report),
            "static_face": self.static or {},
        })

    def _run_stage(self, index: int, cfg: StageConfig, head: TalkingHead, gen: torch.Generator, report: dict,
                   start: int, ckpt: dict | None) -> dict:
        if cfg.name not in STAGES:
            raise TalkgsError(f"unknown stage {cfg.name!r} (known: {', '.join(STAGES)})")
        ctx = self.ctx
        stage = STAGES[cfg.name](ctx, cfg, head)
        model = stage.gaussians()
        # Only what the stage trains needs gradients; the rest is skipped by autograd.
        head.requires_grad_(False)
        for module in stage.networks():
            module.requires_grad_(True)
        if model is not None:
            for k in stage.params:
                model.params[k].requires_grad_(True)
        optimizers = _optimizers(model, stage.params, stage.networks(), cfg, ctx.scene_scale)
        if cfg.densify.enabled and model is not None and set(stage.params) != set(model.params):
            raise TalkgsError(f"stage {cfg.name} trains only the {', '.join(stage.params)} of its Gaussians; "
                              "densification needs all their parameters: set densify.enabled: false for it")
        strategy = make_strategy(cfg.densify) if cfg.densify.enabled and model is not None else None
        state = strategy.initialize_state(scene_scale=ctx.scene_scale) if strategy else None
        # The strategy resizes the Gaussians' own optimizers, never the networks'.
        gauss_opts = {k: o for k, o in optimizers.items() if model is not None and k in model.params}
        if strategy:
            strategy.check_sanity(model.params, gauss_opts)
        elapsed = 0.0
        if ckpt is not None:
            for k, o in optimizers.items():
                o.load_state_dict(ckpt["optimizers"][k])
            if state is not None:
                state.update(ckpt["strategy"])
            elapsed = float(ckpt.get("elapsed", 0.0))
        means_lr0 = cfg.lr.means * ctx.scene_scale
        gamma = (cfg.lr.means_final / cfg.lr.means) ** (1.0 / max(cfg.iterations, 1))
        t0 = time.perf_counter() - elapsed
        bar = log.progress(range(start, cfg.iterations), total=cfg.iterations, initial=start, desc=cfg.name)
        sh_max = head.face.sh_degree
        with _DeferredInterrupt() as interrupt:
            for step in bar:
                if ctx.device.type == "cpu":
                    CORES.update()  # each step's threads: the cores other jobs leave free (talkgs.utils.threads)
                if "means" in optimizers:
                    for group in optimizers["means"].param_groups:
                        group["lr"] = means_lr0 * gamma**step
                batch = ctx.batch(stage.sample(step, gen))
                out = stage.render(batch, sh_degree=min(step // cfg.sh_degree_every, sh_max), training=True)
                loss, logs = stage.loss(batch, out)
                info = stage.primary_layer(out).info
                if strategy:
                    strategy.step_pre_backward(model.params, gauss_opts, state, step, info)
                loss.backward()
                for o in optimizers.values():
                    o.step()
                    o.zero_grad(set_to_none=True)
                if strategy:
                    strategy.step_post_backward(model.params, gauss_opts, state, step, info, packed=False)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{logs.get('psnr', float('nan')):.2f}",
                                    n=head.face.num_gaussians + head.mouth.num_gaussians)
                done = step + 1
                if done % self.cfg.val_every == 0 and done < cfg.iterations:
                    self._validate(stage, cfg.name, done)
                if interrupt.requested or (done % self.cfg.checkpoint_every == 0 and done < cfg.iterations):
                    self._checkpoint(index, done, head, optimizers, state, gen, report, time.perf_counter() - t0)
                if interrupt.requested:
                    bar.close()
                    log.warn(f"interrupted in stage {cfg.name} after step {done}: checkpoint saved; "
                             "continue with talkgs fit --resume")
                    raise KeyboardInterrupt
        seconds = time.perf_counter() - t0
        moves = stage.face_motion or stage.mouth_motion
        check = None
        if moves and self.cfg.self_check.enabled:
            check = check_and_mend(stage, ctx, self.static, self.cfg.self_check)
        elif not moves:
            self.static = appearance(head.face)
        result = {"seconds": round(seconds, 1), "iterations": cfg.iterations, "gaussians": head.face.num_gaussians,
                  "mouth_gaussians": head.mouth.num_gaussians, **self._evaluate(stage, cfg.name)}
        if check is not None:
            result["self_check"] = check
        report["stages"][cfg.name] = result
        self._checkpoint(index + 1, 0, head, None, None, gen, report)
        scores = ", ".join(f"{result[k]:.2f} dB {k.removeprefix('psnr_') if k != 'psnr' else 'frame'}"
                           for k in ("psnr_head", "psnr_mouth", "psnr") if result[k] is not None)
        log.info(f"stage {cfg.name}: {cfg.iterations} iterations in {seconds:.0f} s, held-out PSNR {scores}")
        return result

    # -- validation --------------------------------------------------------------------------------
    @torch.no_grad()
    def _validate(self, stage, name: str, step: int) -> None:
        ctx = self.ctx
        picks = ctx.test_indices[np.linspace(0, len(ctx.test_indices) - 1, self.cfg.val_frames).round().astype(int)]
        rows, scores = [], []
        for i in picks:
            batch = ctx.batch(int(i))
            composite = stage.render(batch).image[0]
            scores.append(float(psnr(composite, batch.image, stage.masks(batch)["head"])))
            err = ((composite - batch.image).abs() * 4).clamp(0, 1)
            rows.append(torch.cat([batch.image, composite.clamp(0, 1), err], 1))
        strip = media.to_uint8(torch.cat(rows, 0))
        tag = "final" if step < 0 else f"{step:06d}"
        cv2.imwrite(str(self.root / schema.VAL_DIR / f"{name}_{tag}.png"), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
        if step >= 0:
            log.info(f"step {step}: held-out PSNR {np.mean(scores):.2f} dB (head, {len(picks)} frames)")

    @torch.no_grad()
    def _evaluate(self, stage, name: str) -> dict:
        """Held-out metrics over every test frame: PSNR on the head region, PSNR and SSIM on the frame."""
        self._validate(stage, name, -1)
        ctx = self.ctx
        head, mouth, full, sim = [], [], [], []
        for i in ctx.test_indices:
            batch = ctx.batch(int(i))
            composite = stage.render(batch).image[0]
            head.append(float(psnr(composite, batch.image, stage.masks(batch)["head"])))
            lips = ((batch.labels == Label.MOUTH) | (batch.labels == Label.LIPS))[..., None].float()
            if lips.sum() > 0:
                mouth.append(float(psnr(composite, batch.image, lips)))
            full.append(float(psnr(composite, batch.image)))
            sim.append(float(ssim(composite.clamp(0, 1), batch.image)))
        finite = lambda v: float(np.mean(v)) if v and math.isfinite(np.mean(v)) else None  # noqa: E731
        return {"psnr_head": finite(head), "psnr_mouth": finite(mouth), "psnr": finite(full), "ssim": finite(sim),
                "test_frames": len(ctx.test_indices)}


class _DeferredInterrupt:
    """Ctrl-C during a step is noted and acted on when the step is complete, so the checkpoint saved
    for it holds a consistent state and ``--resume`` continues exactly. A second Ctrl-C stops at once."""

    def __enter__(self) -> _DeferredInterrupt:
        import signal
        import threading

        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
