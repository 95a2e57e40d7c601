"""Gaussian scene models: the persistent 3D Gaussians and their PLY export."""

from __future__ import annotations

from talkgs.model.gaussians import GaussianModel as GaussianModel
from talkgs.model.ply import export_ply as export_ply
from talkgs.model.ply import load_ply as load_ply

__all__ = ["GaussianModel", "export_ply", "load_ply"]
