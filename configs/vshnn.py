"""VSHNN's video backbone (Lee et al., Sensors 2020): Table 2's rows.

    fergate train --config configs/vshnn.py:variant=c3d_sagru_b --workdir W
    variants: c3d (C3D), resnet3d18 / resnext3d101 (ResNet3D-18 / ResNeXt3D-101, Table 2's
    other 3D CNNs), cnn_lstm / cnn_gru (CNN-LSTM / CNN-GRU), c3d_salstm_a|b|c and
    c3d_sagru_a|b|c (C3D and CNN-SALSTM / CNN-SAGRU, connection A, B or C); frames (stage 1,
    the per-frame CNN alone)

Variants that read appearance features first train the frame CNN (variant=frames) into
W/pretrain/frames, write its features of every clip (`fergate features`), then train on those:
one command runs both stages. The training clips' features come from out-of-fold frame CNNs
(`pretrain.folds` = 3: each trained without one subject fold of the training clips, in
W/pretrain/frames/oof-3/fold-NN; features in W/pretrain/frames/oof-3/features), so that no
training clip's features come from a network that saw its subject; the held-out clips' from
the frame CNN of every training subject; --config.pretrain.folds=0: all from that one
(in-sample, the stacking leak). frames_data=DIR: stage 1 trains on another prepared clip
dataset (the paper's: another dataset), its features in-sample (pretrain.folds = 0).
    lmedcf: the landmark model alone (LMED-CF and its MLP, Table 9)
    fs=True: the frame substitution module (3.4, K = 3 of 16) before the SARNN
    fusion=ic|ws|lrmf|lrmaf: the video model fused with LMED-CF (4.2, Tables 10 and 12); IC in
    one model (Eq. 16); WS / LRMF / LRMAF, as the paper, fuse the two branches trained first,
    each on its own (the stage "branches", W/pretrain/branches, with its own stage 1), frozen:
    the fusion layer alone is fitted on their out-of-fold scores of the training clips
    (pretrain.folds branch models); fit=joint: branches and fusion in one model, one run
    lmed=distances: LMED without the inter-frame correlations (Table 9's LMED row)
    paper=True: the paper's sizes (DenseNet121-FC 4096-4096 frames at 112, C3D with FC 2048,
    SARNN hidden 2048, head 1024; clips prepared at 112 x 112), each network normalising its
    input as its published weights expect, the 3D CNN's convolutions frozen (3.3): give the
    weights with --config.init.weights=FILE[,FILE] (torchvision's DenseNet-121 for the frame
    CNN; the C3D port's Sports-1M C3D, or 3D-ResNets' Kinetics ResNet-18 / ResNeXt-101); the
    default is sized for a CPU
    head_only=True: the SARNN head alone, v read from a `scene` input (`fergate bench` only)
"""

import os

from fergate.config import choice, parse_arg
from fergate.models.backbones import C3D_POOLS, C3D_STAGES, RESNETS_3D
from fergate.models.vshnn import (
    FEATURES_FIELD,
    FUSION_FITS,
    FUSIONS,
    LATE_FUSIONS,
    LMEDS,
    SCORES_FIELD,
    VARIANTS,
    parse_variant,
)

from . import common

#: out-of-fold models of a stage whose outputs this config reads (`pretrain.folds`)
OOF_FOLDS = 3


def get_config(arg=None):
    arg = parse_arg(arg, variant="c3d_sagru_b", paper=False, head_only=False, smoke=False, fs=False, fusion="",
                    fit="held_out", lmed="cf", frames_data="")
    variant = choice(arg.variant, VARIANTS, "VSHNN variant")
    if arg.fusion:
        choice(arg.fusion, FUSIONS[1:], "VSHNN fusion")
    choice(arg.lmed, LMEDS, "VSHNN landmark feature (lmed)")
    # head_only (benchmarks): the SARNN head with the fusion in the graph
    fit = choice(arg.fit, FUSION_FITS, "VSHNN fusion fit") if arg.fusion in LATE_FUSIONS and not arg.head_only \
        else "joint"
    stacked = fit == "held_out"  # the fusion layer alone, on stage "branches"' scores
    _, cell, _ = parse_variant(variant)
    c = common.base("vshnn", variant)
    # the sample set's clips only (neutral -> apex, T = 16), split by subject into train_clips / test_clips
    c.data.prep_options = dict(size=0, clips=420, **(dict(clip_size=112) if arg.paper else {}))
    c.data.train_split, c.data.eval_split = "train_clips", "test_clips"
    if variant == "frames":  # 5.2.1: the frame CNN sees flips, rotations (and here brightness / contrast)
        c.data.augment = "flip|rotate(10)|brightness_contrast"
    elif (variant.startswith("c3d") or variant in RESNETS_3D) and not (arg.head_only or stacked):  # 5.2.2: the 3D
        # CNN's only augmentation (clips)
        c.data.augment = "flip"
    c.input.frames = 16
    c.input.clip_size = 112 if arg.paper else 64
    c.input.channels = 3
    c.input.train_frames = 2  # stage 1 trains on 2 random frames of each clip: 64 clips = 128 frames a step
    c.input.landmark_dims = 2  # 3 reads 3D landmarks (T x 68 x 3) when the records carry them
    c.input.batch_size = {"frames": 64, "lmedcf": 32}.get(variant, 16)
    c.vshnn = dict(
        num_classes=0,  # 0: the data's
        frame_trunk="densenet121" if arg.paper else "small",
        frame_convs=(16, 32, 64, 128),  # the small trunk's
        frame_fc=(4096, 4096) if arg.paper else (256, 256),  # the appearance feature is the last one's output
        c3d_stages=C3D_STAGES if arg.paper else ((16,), (32,), (64,), (128,)),
        c3d_pools=C3D_POOLS if arg.paper else C3D_POOLS[:4],
        c3d_downsample=1 if arg.paper else 2,  # the CPU default's 3D CNN reads 16 x 32 x 32
        scene=2048 if arg.paper else 256,  # v
        aux_hidden=2048 if arg.paper else 256,  # section 5.2.2: 2048 in both the main and the auxiliary FC
        aux_weight=0.5,  # lambda, Eq. 15
        # the paper's pretrained 3D CNN (init.weights, or init.params_from=W, init.params=c3d_convs) keeps its
        # convolutions frozen (3.3); from scratch they train
        freeze_convs=arg.paper,
        # input normalisations the published weights expect (fergate.models.backbones.NORMS): torchvision's
        # DenseNet-121 ImageNet's mean / std, the C3D port 0-255, 3D-ResNets Kinetics' mean / std
        frame_norm="imagenet" if arg.paper else "unit",
        c3d_norm=("kinetics" if variant in RESNETS_3D else "raw") if arg.paper else "unit",
        hidden=2048 if arg.paper else 256,
        head=1024 if arg.paper else 256,
        dropout=0.5,
        head_only=arg.head_only,
        fs_k=3 if arg.fs else 0,  # frames the FS module substitutes (3.4: K = 3 for N = 16)
        fusion=arg.fusion,  # "", ic, ws, lrmf, lrmaf
        ws_alpha=0.5,  # Eq. 17's alpha: the paper's 0.5 on CK+ / MMI (lab data), 0.6 on AFEW
        fusion_rank=4,  # gamma of Eq. 20 (the paper does not give it)
        lmed_blocks=(256, 256),  # LMED-CF's (Dense - BN - ReLU) blocks: 2 for lab data, (256, 256, 256) in the wild
        branch_weight=1.0,  # late fusions (ws, lrmf, lrmaf): each branch's own cross-entropy, weighted
        fusion_fit=fit,  # late fusions: held_out (the paper's), branches (its earlier stage), joint
        lmed=arg.lmed,  # cf: LMED-CF (4.1); distances: LMED alone (Table 9)
    )
    # with --config.mesh.model=M: the SARNN's gate columns (input, scene, recurrent), its head's rows and
    # the 3D CNN's scene layer split over M devices
    c.mesh.rules = ("sarnn/(input|scene)/kernel=-,model", "sarnn/input/bias=model", "sarnn/recurrent_kernel=-,model",
                    "sarnn/head0/kernel=model,-", "scene/kernel=-,model", "scene/bias=model")
    # Adam from scratch (the paper fine-tunes pretrained nets with SGD); RNN gradients clipped
    # to [-10, 10] (section 5.2.3)
    c.optim.lr, c.optim.end_lr = 1e-3, 0.0
    c.optim.clip_value = 10.0 if cell else 0.0
    c.train.steps = 1500
    c.train.log_every = 50
    c.eval.batch_size = 16
    c.eval.top_k = (1, 2)
    here = os.path.basename(__file__)  # relative to this file's directory (fergate.options)
    data_keys = ("data.dir", "data.prep_options", "data.train_split", "data.eval_split")
    if stacked:  # stage "branches": the video model and LMED-CF, each by its own loss; their scores [p, q]
        c.data.features_from, c.data.features_field = "branches", SCORES_FIELD
        c.pretrain.folds = OOF_FOLDS  # the fusion layer fits the branches' out-of-fold scores
        c.pretrain.configs = {"branches": f"{here}:variant={variant},fs={arg.fs},fusion=ws,fit=branches,"
                                          f"lmed={arg.lmed},paper={arg.paper},smoke={arg.smoke},"
                                          f"frames_data={arg.frames_data}"}
        # its own stage 1 takes this config's fold count, unless it trains on other data
        c.pretrain.inherit = (*data_keys, "input.frames", "input.clip_size", "input.channels", "input.landmark_dims",
                              "train.dtype", "init.weights", "pretrain.steps",
                              *(() if arg.frames_data else ("pretrain.folds",)))
    elif cell is not None and not arg.head_only:  # appearance features from stage 1
        c.data.features_from, c.data.features_field = "frames", FEATURES_FIELD
        c.pretrain.configs = {"frames": f"{here}:variant=frames,paper={arg.paper},smoke={arg.smoke},"
                                        f"frames_data={arg.frames_data}"}
        # stage 1 on another prepared clip dataset (frames_data) keeps its own: it never saw these clips
        c.pretrain.inherit = (*(data_keys[2:] if arg.frames_data else data_keys), "input.frames",
                              "input.train_frames", "input.clip_size", "input.channels", "vshnn.frame_trunk",
                              "vshnn.frame_convs", "vshnn.frame_fc", "vshnn.frame_norm", "train.dtype", "init.weights")
        c.pretrain.folds = 0 if arg.frames_data else OOF_FOLDS
    if variant == "frames" and arg.frames_data:
        c.data.dir = arg.frames_data
    if arg.smoke:  # the smoke sample set every family's tests share (its 140 clips)
        c.data.prep_options = dict(size=350, **(dict(clip_size=112) if arg.paper else {}))
        c.input.batch_size = 16 if variant == "frames" else 8
    return common.smoke(c) if arg.smoke else c
