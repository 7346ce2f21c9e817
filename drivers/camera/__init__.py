"""Camera driver: OpenCV sources, the motion gate, inference and snapshots."""

from drivers.camera.driver import CameraConfig, CameraDriver

__all__ = ["CameraConfig", "CameraDriver"]
