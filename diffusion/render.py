"""Procedural normal maps: sphere-traced signed distance functions seen from HumanNorm cameras.

References:
    Huang, Huang, Chen, Xu, Guo. HumanNorm: Learning Normal Diffusion Model for High-quality and
        Realistic 3D Human Generation. CVPR 2024, arXiv:2310.01406 (camera sampling, view and
        body-part prompts, normal maps as images).
    Hart. Sphere tracing: a geometric method for the antialiased ray tracing of implicit
        surfaces. The Visual Computer 12(10), 1996 (the ray marcher).

A scene is a union (hard minimum) of primitives: capsules (spheres are capsules of zero
length), rounded boxes and tori. The mannequin is an articulated set of capsules and spheres
with random proportions and pose, facing +z in a y-up world; its left side is +x. Normals are
the normalised autograd gradient of the scene SDF at the hit point, rotated into camera space
(OpenGL convention: the camera looks down -z, so every visible surface has n_z > 0). The
camera is orthographic: rays are parallel, so "visible" and "faces the camera" coincide.

View buckets follow HumanNorm: front for |azimuth| < 45 deg, back for |azimuth| > 135 deg,
otherwise "left side" for azimuth in (45, 135) (the camera stands at the mannequin's left, +x)
and "right side" for azimuth in (-135, -45).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "FRAMINGS",
    "PART_NAMES",
    "VIEWS",
    "Camera",
    "NormalMapRenderer",
    "RenderResult",
    "Scene",
    "build_prompt",
    "light_direction",
    "random_mannequin",
    "random_primitives",
    "sample_camera",
    "view_bucket",
]

VIEWS = ("front view", "back view", "left side view", "right side view")
FRAMINGS = ("full body", "upper body", "only head")
PART_NAMES = (
    "background", "head", "nose", "neck", "torso", "shoulders", "pelvis",
    "left upper arm", "left forearm", "right upper arm", "right forearm",
    "left thigh", "left shin", "right thigh", "right shin", "left foot", "right foot",
    "object",
)
PART_IDS = {name: i for i, name in enumerate(PART_NAMES)}
PROMPT_SUFFIX = ", black background, normal map"


def view_bucket(azimuth_deg: float) -> int:
    """Index into :data:`VIEWS` of a camera azimuth in degrees (any real value, wrapped)."""
    a = (float(azimuth_deg) + 180.0) % 360.0 - 180.0
    if abs(a) < 45.0:
        return 0
    if abs(a) > 135.0:
        return 1
    return 2 if a > 0 else 3


def build_prompt(view: int, framing: int) -> str:
    """HumanNorm-style prompt, e.g. ``"front view, full body, black background, normal map"``."""
    if not 0 <= view < len(VIEWS) or not 0 <= framing < len(FRAMINGS):
        raise ValueError(
            f"view {view} / framing {framing} out of range; allowed 0..{len(VIEWS) - 1} / "
            f"0..{len(FRAMINGS) - 1}"
        )
    return f"{VIEWS[view]}, {FRAMINGS[framing]}{PROMPT_SUFFIX}"


def light_direction(dtype: torch.dtype | None = None) -> torch.Tensor:
    """The renderer's camera-space light direction (unit vector, upper-left-front)."""
    light = torch.tensor([-0.4, 0.5, 0.77], dtype=dtype or torch.get_default_dtype())
    return light / light.norm()


@dataclass
class Camera:
    """Orthographic camera on a sphere around ``center``; angles in degrees."""

    azimuth: float
    elevation: float
    center: tuple[float, float, float]
    half_extent: float
    distance: float = 4.0


def sample_camera(
    rng: np.random.Generator, center: tuple[float, float, float], half_extent: float
) -> Camera:
    """HumanNorm's camera distribution: azimuth U(-180, 180), elevation U(-10, 10) degrees."""
    return Camera(
        azimuth=float(rng.uniform(-180.0, 180.0)),
        elevation=float(rng.uniform(-10.0, 10.0)),
        center=center,
        half_extent=half_extent,
    )


# ---------------------------------------------------------------------------------------------
# Scenes


@dataclass
class Scene:
    """Primitives in world coordinates (numpy float64 arrays) with a part id and albedo each.

    capsules: (K, 7) rows ``ax, ay, az, bx, by, bz, radius`` (a == b gives a sphere);
    boxes: (M, 13) rows ``center(3), half sizes(3), rounding(1), rotation(6: two columns)``;
    tori: (T, 5) rows ``center(3), major radius, minor radius`` (axis = world y).
    """

    capsules: np.ndarray
    capsule_parts: np.ndarray
    boxes: np.ndarray
    box_parts: np.ndarray
    tori: np.ndarray
    torus_parts: np.ndarray
    albedo: np.ndarray  # (len(PART_NAMES), 3) colours in [0, 1]
    framings: dict[int, tuple[tuple[float, float, float], float]]  # framing -> center, extent
    description: str = "mannequin"


def _rotation(axis: str, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _palette(rng: np.random.Generator) -> np.ndarray:
    """Per-part albedo: skin, shirt, trousers, shoes colours drawn per mannequin."""
    skin = rng.uniform([0.55, 0.35, 0.25], [0.95, 0.75, 0.6])
    shirt, trousers, shoes = rng.uniform(0.1, 0.9, size=(3, 3))
    albedo = np.tile(skin, (len(PART_NAMES), 1))
    for name in ("torso", "shoulders", "left upper arm", "right upper arm"):
        albedo[PART_IDS[name]] = shirt
    for name in ("pelvis", "left thigh", "left shin", "right thigh", "right shin"):
        albedo[PART_IDS[name]] = trousers
    albedo[PART_IDS["left foot"]] = albedo[PART_IDS["right foot"]] = shoes
    albedo[PART_IDS["object"]] = shirt
    albedo[0] = 0.0
    return albedo


def random_mannequin(rng: np.random.Generator, neutral: bool = False) -> Scene:
    """An articulated mannequin with random proportions and pose (``neutral``: arms down).

    The body stands on y = 0, faces +z, and its left is +x.
    """
    u = (lambda lo, hi: 0.5 * (lo + hi)) if neutral else (lambda lo, hi: rng.uniform(lo, hi))
    scale = u(0.9, 1.1)
    shin, thigh = u(0.38, 0.46) * scale, u(0.38, 0.46) * scale
    torso_len, neck_len = u(0.42, 0.52) * scale, u(0.06, 0.1) * scale
    head_r, torso_r, limb_r = u(0.1, 0.125) * scale, u(0.12, 0.16) * scale, u(0.045, 0.06) * scale
    upper_arm, forearm = u(0.26, 0.32) * scale, u(0.24, 0.3) * scale
    shoulder_w, hip_w = u(0.17, 0.22) * scale, u(0.08, 0.11) * scale
    foot_r = limb_r * 0.8

    caps: list[tuple[np.ndarray, np.ndarray, float, str]] = []
    hip_y = shin + thigh + foot_r
    chest_y = hip_y + torso_len
    caps.append(
        (np.array([0, hip_y + 0.05, 0]), np.array([0, chest_y - 0.04, 0]), torso_r, "torso")
    )
    caps.append(
        (np.array([-hip_w, hip_y, 0]), np.array([hip_w, hip_y, 0]), torso_r * 0.8, "pelvis")
    )
    caps.append((np.array([-shoulder_w, chest_y, 0]), np.array([shoulder_w, chest_y, 0]),
                 limb_r * 1.3, "shoulders"))
    neck_top = np.array([0, chest_y + neck_len + 0.03, 0])
    caps.append((np.array([0, chest_y, 0]), neck_top, limb_r, "neck"))
    head_yaw = 0.0 if neutral else rng.uniform(-0.5, 0.5)
    head_pitch = 0.0 if neutral else rng.uniform(-0.25, 0.25)
    head_c = neck_top + np.array([0, head_r * 0.9, 0])
    caps.append((head_c, head_c, head_r, "head"))
    nose_dir = _rotation("y", head_yaw) @ _rotation("x", -head_pitch) @ np.array([0, 0, 1.0])
    nose_c = head_c + nose_dir * head_r * 0.95
    caps.append((nose_c, nose_c, head_r * 0.28, "nose"))

    down = np.array([0, -1.0, 0])
    for side, sign in (("left", 1.0), ("right", -1.0)):
        abduct = 0.12 if neutral else rng.uniform(0.05, 1.4)
        flex = 0.0 if neutral else rng.uniform(-0.6, 1.2)
        elbow_bend = 0.1 if neutral else rng.uniform(0.0, 1.6)
        shoulder = np.array([sign * shoulder_w, chest_y, 0])
        rot = _rotation("x", -flex) @ _rotation("z", sign * abduct)
        elbow = shoulder + upper_arm * (rot @ down)
        hand = elbow + forearm * (rot @ _rotation("x", -elbow_bend) @ down)
        caps.append((shoulder, elbow, limb_r, f"{side} upper arm"))
        caps.append((elbow, hand, limb_r * 0.85, f"{side} forearm"))

        leg_abduct = 0.04 if neutral else rng.uniform(0.0, 0.3)
        leg_flex = 0.0 if neutral else rng.uniform(-0.35, 0.6)
        knee_bend = 0.0 if neutral else rng.uniform(0.0, 0.8)
        hip = np.array([sign * hip_w, hip_y, 0])
        rot = _rotation("x", -leg_flex) @ _rotation("z", sign * leg_abduct)
        knee = hip + thigh * (rot @ down)
        ankle = knee + shin * (rot @ _rotation("x", knee_bend) @ down)
        toe = ankle + np.array([0, -foot_r * 0.2, 0.14 * scale])
        caps.append((hip, knee, limb_r * 1.35, f"{side} thigh"))
        caps.append((knee, ankle, limb_r * 1.05, f"{side} shin"))
        caps.append((ankle, toe, foot_r, f"{side} foot"))

    capsules = np.array([[*a, *b, r] for a, b, r, _ in caps], dtype=np.float64)
    parts = np.array([PART_IDS[name] for *_, name in caps])
    top = head_c[1] + head_r
    framings = {
        0: ((0.0, 0.5 * top, 0.0), 0.55 * top + 0.05),
        1: ((0.0, chest_y + 0.05 * scale, 0.0), 0.38 * scale + 0.5 * head_r),
        2: ((float(head_c[0]), float(head_c[1]), 0.0), 1.7 * head_r),
    }
    empty = np.zeros((0, 13)), np.zeros(0, dtype=int), np.zeros((0, 5)), np.zeros(0, dtype=int)
    return Scene(capsules, parts, *empty, _palette(rng), framings, "mannequin")


SHAPES = ("sphere", "capsule", "box", "torus")


def random_primitives(rng: np.random.Generator, max_shapes: int = 3) -> Scene:
    """One to ``max_shapes`` random spheres, capsules, rounded boxes and tori near the origin."""
    caps, boxes, tori, names = [], [], [], []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        c = rng.uniform(-0.35, 0.35, size=3)
        if kind == "sphere":
            caps.append([*c, *c, rng.uniform(0.15, 0.35)])
        elif kind == "capsule":
            d = rng.normal(size=3)
            d *= rng.uniform(0.15, 0.35) / np.linalg.norm(d)
            caps.append([*(c - d), *(c + d), rng.uniform(0.08, 0.18)])
        elif kind == "box":
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            boxes.append([*c, *rng.uniform(0.1, 0.3, size=3), 0.03, *q[:, 0], *q[:, 1]])
        else:
            tori.append([*c, rng.uniform(0.2, 0.35), rng.uniform(0.05, 0.1)])
        names.append(kind)
    obj = PART_IDS["object"]
    description = " and ".join(sorted(set(names)))
    return Scene(
        np.array(caps, dtype=np.float64).reshape(-1, 7), np.full(len(caps), obj),
        np.array(boxes, dtype=np.float64).reshape(-1, 13), np.full(len(boxes), obj),
        np.array(tori, dtype=np.float64).reshape(-1, 5), np.full(len(tori), obj),
        _palette(rng), {0: ((0.0, 0.0, 0.0), 0.85)}, description,
    )


# ---------------------------------------------------------------------------------------------
# Signed distances (torch, any float dtype, differentiable)


def _scene_sdf(
    p: torch.Tensor, prims: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scene distance (N,) and the index of the nearest primitive (N,) over all groups."""
    dists = []
    caps = prims["capsules"]
    if len(caps):
        a, b, r = caps[:, :3], caps[:, 3:6], caps[:, 6]
        pa = p[:, None, :] - a[None]
        ba = (b - a)[None]
        h = ((pa * ba).sum(-1) / (ba * ba).sum(-1).clamp_min(1e-12)).clamp(0.0, 1.0)
        dists.append((pa - h[..., None] * ba).norm(dim=-1) - r[None])
    boxes = prims["boxes"]
    if len(boxes):
        c, half, rnd = boxes[:, :3], boxes[:, 3:6], boxes[:, 6]
        e1, e2 = boxes[:, 7:10], boxes[:, 10:13]
        rot = torch.stack([e1, e2, torch.linalg.cross(e1, e2)], dim=-1)  # (M, 3, 3) columns
        local = torch.einsum("mij,nmi->nmj", rot, p[:, None, :] - c[None])
        q = local.abs() - (half - rnd[:, None])[None]
        outside = q.clamp_min(0.0).norm(dim=-1)
        inside = q.max(dim=-1).values.clamp_max(0.0)
        dists.append(outside + inside - rnd[None])
    tori = prims["tori"]
    if len(tori):
        local = p[:, None, :] - tori[None, :, :3]
        ring = torch.sqrt(local[..., 0] ** 2 + local[..., 2] ** 2) - tori[None, :, 3]
        dists.append(torch.sqrt(ring**2 + local[..., 1] ** 2) - tori[None, :, 4])
    d = torch.cat(dists, dim=1)
    return d.min(dim=1)


# ---------------------------------------------------------------------------------------------
# Renderer


@dataclass
class RenderResult:
    """Camera-space outputs of one render, all (H, W[, 3]) tensors in the renderer's dtype.

    normals: unit normals (zero on the background); depth: distance from the image plane
    (zero on the background); mask: bool; parts: part id per pixel (0 = background);
    color: shaded colour in [0, 1] (per-part albedo times ambient + Lambertian n.l).
    """

    normals: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor
    parts: torch.Tensor
    color: torch.Tensor
    camera: Camera


class NormalMapRenderer:
    """Sphere-trace a :class:`Scene` into normals, depth, mask, parts and a shaded colour image.

    Arguments:
        resolution: output height and width in pixels.
        max_steps: sphere-tracing iterations per ray.
        dtype: float dtype of the computation (float32 or float64; default: torch's default).
        ambient: ambient light added to the Lambertian term of the colour image.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> scene = random_mannequin(rng)
        >>> cam = sample_camera(rng, *scene.framings[0])
        >>> out = NormalMapRenderer(32).render(scene, cam)
        >>> tuple(out.normals.shape)
        (32, 32, 3)
    """

    def __init__(
        self,
        resolution: int,
        max_steps: int = 80,
        dtype: torch.dtype | None = None,
        ambient: float = 0.15,
    ) -> None:
        if not isinstance(resolution, int) or resolution < 2:
            raise ValueError(f"resolution must be an int >= 2, got {resolution!r}")
        self.resolution, self.max_steps, self.ambient = resolution, max_steps, ambient
        self.dtype = dtype or torch.get_default_dtype()

    def camera_axes(self, camera: Camera) -> torch.Tensor:
        """(3, 3) matrix whose rows are the camera x, y, z axes in world coordinates."""
        az, el = math.radians(camera.azimuth), math.radians(camera.elevation)
        z = torch.tensor(
            [math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)],
            dtype=self.dtype,
        )
        up = torch.tensor([0.0, 1.0, 0.0], dtype=self.dtype)
        x = torch.linalg.cross(up, z)
        x = x / x.norm()
        y = torch.linalg.cross(z, x)
        return torch.stack([x, y, z])

    def render(self, scene: Scene, camera: Camera) -> RenderResult:
        """Render one scene from one camera."""
        n, dt = self.resolution, self.dtype
        prims = {
            "capsules": torch.as_tensor(scene.capsules, dtype=dt),
            "boxes": torch.as_tensor(scene.boxes, dtype=dt),
            "tori": torch.as_tensor(scene.tori, dtype=dt),
        }
        part_of = torch.as_tensor(
            np.concatenate([scene.capsule_parts, scene.box_parts, scene.torus_parts]),
            dtype=torch.long,
        )
        axes = self.camera_axes(camera)
        coords = (torch.arange(n, dtype=dt) + 0.5) / n * 2.0 - 1.0
        v, u = torch.meshgrid(-coords, coords, indexing="ij")  # v = +1 on the top row
        plane = u.reshape(-1, 1) * axes[0] + v.reshape(-1, 1) * axes[1]
        center = torch.tensor(camera.center, dtype=dt)
        origins = center + camera.half_extent * plane + camera.distance * axes[2]
        direction = -axes[2]
        eps = 1e-4 * camera.half_extent
        t_max = 2.0 * camera.distance
        t = torch.zeros(n * n, dtype=dt)
        active = torch.ones(n * n, dtype=torch.bool)
        hit = torch.zeros(n * n, dtype=torch.bool)
        with torch.no_grad():
            for _ in range(self.max_steps):
                idx = active.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                d, _ = _scene_sdf(origins[idx] + t[idx, None] * direction, prims)
                t[idx] += d
                close = d < eps
                hit[idx[close]] = True
                active[idx[close | (t[idx] > t_max)]] = False
        with torch.enable_grad():  # callers may render inside no_grad (e.g. sampling hooks)
            points = (origins + t[:, None] * direction)[hit].detach().requires_grad_(True)
            d, nearest = _scene_sdf(points, prims)
            (grad,) = torch.autograd.grad(d.sum(), points)
        world_n = grad / grad.norm(dim=-1, keepdim=True)
        cam_n = world_n @ axes.T
        # Rays that only graze a silhouette stop on its rim with n_z ~ 0: count them as misses.
        keep = cam_n[:, 2] > 1e-3
        hit_idx = hit.nonzero().squeeze(1)[keep]
        cam_n, nearest = cam_n[keep].detach(), nearest[keep]

        normals = torch.zeros(n * n, 3, dtype=dt)
        normals[hit_idx] = cam_n
        mask = torch.zeros(n * n, dtype=torch.bool)
        mask[hit_idx] = True
        depth = torch.zeros(n * n, dtype=dt)
        depth[hit_idx] = t[hit_idx]
        parts = torch.zeros(n * n, dtype=torch.long)
        parts[hit_idx] = part_of[nearest]
        albedo = torch.as_tensor(scene.albedo, dtype=dt)[parts]
        shade = (cam_n @ light_direction(dt)).clamp_min(0.0)
        light = torch.zeros(n * n, dtype=dt)
        light[hit_idx] = self.ambient + (1.0 - self.ambient) * shade
        color = (albedo * light[:, None]).clamp(0.0, 1.0)
        return RenderResult(
            normals.view(n, n, 3), depth.view(n, n), mask.view(n, n), parts.view(n, n),
            color.view(n, n, 3), camera,
        )
