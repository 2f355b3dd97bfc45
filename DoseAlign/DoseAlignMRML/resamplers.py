"""Slicer's two resamplers for the engine's one case path: the Resample CLI and in-process VTK.

``DoseAlignLib.api.run_case(case, options, resampler=...)`` does everything a case needs (reading,
units, sums, reference grid, structures, audit, meta.json) and asks its *resampler* only to put one
volume on one grid (protocol ``DoseAlignLib.api.Resampler``). The Slicer module's backends differ in
that resampler and in nothing else:

* :class:`CliResampler` runs *Resample Scalar/Vector/DWI Volume* (``slicer.modules.
  resamplescalarvectordwivolume``) through ``slicer.cli``: the source volume and a reference volume
  made from the target grid become temporary scalar volume nodes (:mod:`.volumes`), the CLI writes
  the output node, its voxels are read back and every temporary node is removed.
* :class:`VtkResampler` runs ``vtkSlicerVolumesLogic::ResampleVolumeToReferenceVolume`` (VTK's
  ``vtkImageReslice``, linear) in this process, the same way.

Both declare ``uniform_sources_only``: a volume node holds one IJKToRAS matrix, so the engine first
puts uneven dose frames, missing CT slices and gantry tilt exactly onto an even grid (meta.json's
``resampling.before_backend`` says so). Integer sources are handed over as float32 and the output is
rounded to the nearest integer, as the engine's resampler does (the CLI itself would truncate an
int16 image toward zero).

Only MRML, VTK and ``slicer.util`` are needed here, plus ``slicer.cli`` and the CLI module for
:class:`CliResampler`; both are looked up when the resampler runs (or given), so this file is tested
with PyPI ``slicer-core`` and a ``slicer.cli`` double that runs the real executable.
References: Slicer ``Base/Python/slicer/cli.py`` (``run``/``runSync``: v5.6.2 :53-95, v5.10.0 :53-98),
``Libs/MRML/CLI/vtkMRMLCommandLineModuleNode.h`` (status flags, ``BusyMask``, ``Cancel``: v5.6.2
:84-102, :166), ``Modules/Loadable/Volumes/Logic/vtkSlicerVolumesLogic.cxx`` (v5.8.1 :1475-1560).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Optional

import numpy as np
from DoseAlignLib.api import Cancelled, DoseAlignError, GeometryError, Grid, InputError, Interpolator, Volume

from . import volumes as mrml

#: The Resample CLI's attribute under ``slicer.modules`` (Slicer lower-cases the module name).
CLI_MODULE_NAME = "resamplescalarvectordwivolume"
#: Index tolerance of "inside the half-voxel rim" (the engine's is 1e-6; VTK clamps there too).
INSIDE_TOLERANCE = 1e-6


class ResamplingError(DoseAlignError):
    """A Slicer resampler failed (the CLI reported an error, wrote nothing, or could not start); a batch
    reports the case as failed with this reason and goes on."""


def _source_array(volume: Volume) -> np.ndarray:
    """The voxels handed to Slicer: integers as float32 (so the output can be rounded, not truncated)."""
    array = np.asarray(volume.array)
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return array.astype(np.float32)
    return array


def _as_output(values: np.ndarray, dtype) -> np.ndarray:
    """``values`` in ``dtype``; integers rounded to the nearest and clipped to the type's range."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)


def _check_uniform(volume: Volume, target: Grid) -> None:
    if not volume.grid.is_uniform or not volume.grid.is_orthogonal():
        raise GeometryError(
            "a Slicer resampler got a source with uneven slices or skewed axes",
            hint="run it through DoseAlignLib.api.run_case, which evens such sources first",
        )
    if not target.is_uniform:
        raise GeometryError("a Slicer resampler cannot write a grid with uneven slices")


def _remove_with_helpers(scene, node) -> None:
    """Remove ``node`` and its display and storage nodes (Slicer's Data logic would; a bare scene does not)."""
    if node is None or node.GetScene() is None:
        return
    helpers = []
    if node.IsA("vtkMRMLDisplayableNode"):
        helpers += [node.GetNthDisplayNode(n) for n in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        helpers += [node.GetNthStorageNode(n) for n in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and helper.GetScene() is not None:
            scene.RemoveNode(helper)


def _temporary_node(scene, volume: Volume, name: str):
    node = mrml.volume_node_from_volume(volume, scene, name, create_display_nodes=False)
    node.SetHideFromEditors(True)
    return node


def _reference_node(scene, target: Grid):
    """A node with ``target``'s geometry (its voxels, all 0, are never read as values)."""
    return _temporary_node(scene, Volume(np.zeros(target.shape, np.uint8), target), "DoseAlign reference grid")


class CliResampler:
    """Resamples with the *Resample Scalar/Vector/DWI Volume* CLI, as Slicer runs it.

    Parameters
    ----------
    scene : vtkMRMLScene, optional
        Where the temporary nodes go (default ``slicer.mrmlScene`` when called).
    wait : callable, optional
        Called repeatedly while the CLI runs (e.g. ``slicer.app.processEvents`` plus a short sleep,
        so the panel stays responsive; it may raise :class:`~DoseAlignLib.api.Cancelled`, which cancels
        the CLI). Without it the CLI runs with ``slicer.cli.runSync`` (batch, notebook).
    name : str
        The ``resampling.backend`` meta.json records.
    """

    uniform_sources_only = True

    def __init__(self, scene=None, wait: Optional[Callable[[], None]] = None, name: str = "slicer-cli") -> None:
        self.scene = scene
        self.wait = wait
        self.name = name
        self.runs = 0  # CLI runs made (for tests and the log)
        self.seconds = 0.0

    def __call__(self, volume: Volume, target: Grid, interpolator: Interpolator, *, fill: float, dtype) -> np.ndarray:
        import slicer

        _check_uniform(volume, target)
        scene = self.scene if self.scene is not None else slicer.mrmlScene
        module = getattr(getattr(slicer, "modules", None), CLI_MODULE_NAME, None)
        if module is None:
            raise ResamplingError(
                "the Resample Scalar/Vector/DWI Volume module is not available (Slicer started with CLI modules "
                "disabled?); choose the in-process or engine backend"
            )
        interpolation = Interpolator(interpolator).value  # linear | nn | ws | bs: the CLI's own names
        input_node = reference_node = output_node = cli_node = None
        started = time.monotonic()
        try:
            input_node = _temporary_node(scene, volume.with_array(_source_array(volume)), "DoseAlign CLI input")
            reference_node = _reference_node(scene, target)
            output_node = scene.AddNewNodeByClass(mrml.SCALAR_VOLUME_CLASS, "DoseAlign CLI output")
            output_node.SetHideFromEditors(True)
            parameters = {
                "inputVolume": input_node.GetID(),
                "outputVolume": output_node.GetID(),
                "referenceVolume": reference_node.GetID(),
                "interpolationType": interpolation,
                "defaultPixelValue": float(fill),  # a numpy scalar would be dropped by slicer.cli (not a float)
            }
            cli_node = self._start(slicer.cli, module, parameters)
            self._wait(cli_node)
            values = self._output(cli_node, output_node, target)
            return _as_output(values, dtype)
        finally:
            for node in (cli_node, output_node, reference_node, input_node):
                _remove_with_helpers(scene, node)
            self.runs += 1
            self.seconds += time.monotonic() - started

    def _start(self, cli, module, parameters):
        """The CLI node of a run: finished (``runSync``) or, with ``wait``, started (``run``)."""
        if self.wait is None:
            node = cli.runSync(module, None, parameters, update_display=False)
        else:
            node = cli.run(module, None, parameters, wait_for_completion=False, update_display=False)
        if node is None:  # cli.run returns None when it cannot create the CLI node (cli.py:76-78 at v5.8.1)
            raise ResamplingError("slicer.cli could not start Resample Scalar/Vector/DWI Volume")
        return node

    def _wait(self, node) -> None:
        """Wait for an asynchronous run; a Cancelled from ``wait`` cancels the CLI (its process is killed)."""
        if self.wait is None:
            return
        try:
            while node.GetStatus() & node.BusyMask:
                self.wait()
        except Cancelled:
            node.Cancel()
            deadline = time.monotonic() + 30.0
            while node.GetStatus() & node.BusyMask and time.monotonic() < deadline:
                with contextlib.suppress(Cancelled):
                    self.wait()
            raise

    @staticmethod
    def _output(cli_node, output_node, target: Grid) -> np.ndarray:
        import slicer

        status = cli_node.GetStatus()
        if status & cli_node.ErrorsMask:
            text = (cli_node.GetErrorText() or "").strip() or "(no error text)"
            raise ResamplingError(f"Resample Scalar/Vector/DWI Volume failed: {text}")
        if status == cli_node.Cancelled:
            raise Cancelled("Resample Scalar/Vector/DWI Volume was cancelled")
        if status != cli_node.Completed:
            raise ResamplingError(f"Resample Scalar/Vector/DWI Volume ended with status {cli_node.GetStatusString()}")
        if output_node.GetImageData() is None:  # the CLI can exit 0 without writing: Slicer still says Completed
            raise ResamplingError("Resample Scalar/Vector/DWI Volume completed but wrote no output volume")
        problem = mrml.geometry_difference(output_node, target)
        if problem:
            raise ResamplingError(f"the Resample CLI's output is not on the reference grid: {problem}")
        return np.array(slicer.util.arrayFromVolume(output_node), copy=True)


class VtkResampler:
    """Resamples in this process with ``vtkSlicerVolumesLogic::ResampleVolumeToReferenceVolume`` (linear).

    VTK's background is 0; the ``fill`` value is written where a target voxel centre lies more than half
    a voxel outside the source (where VTK gives its background), computed slice by slice.
    """

    uniform_sources_only = True

    def __init__(self, scene=None, name: str = "slicer-vtk") -> None:
        self.scene = scene
        self.name = name
        self.runs = 0

    def __call__(self, volume: Volume, target: Grid, interpolator: Interpolator, *, fill: float, dtype) -> np.ndarray:
        import slicer

        if Interpolator(interpolator) is not Interpolator.LINEAR:
            raise InputError(
                f"in-process VTK resampling is linear only, not {Interpolator(interpolator).value!r}; "
                "choose the Resample CLI or the engine backend"
            )
        _check_uniform(volume, target)
        scene = self.scene if self.scene is not None else slicer.mrmlScene
        input_node = reference_node = output_node = None
        try:
            input_node = _temporary_node(scene, volume.with_array(_source_array(volume)), "DoseAlign VTK input")
            reference_node = _reference_node(scene, target)
            output_node = mrml.resample_in_process(input_node, reference_node, name="DoseAlign VTK output")
            values = np.array(slicer.util.arrayFromVolume(output_node), copy=True)
        finally:
            for node in (output_node, reference_node, input_node):
                _remove_with_helpers(scene, node)
            self.runs += 1
        if values.shape != target.shape:
            raise ResamplingError(f"in-process resampling gave shape {values.shape}, expected {target.shape}")
        if fill != 0.0:
            fill_outside(values, volume.grid, target, fill)
        return _as_output(values, dtype)


def fill_outside(values: np.ndarray, source: Grid, target: Grid, fill: float) -> None:
    """Write ``fill`` into ``values`` (shape of ``target``) wherever a voxel centre lies more than half a
    voxel outside ``source`` (uniform). Works one target slice at a time: memory of one slice, not of
    the volume (a meshgrid of the whole target costs ~100 bytes per voxel)."""
    to_index = np.linalg.inv(source.affine) @ target.affine  # target (i, j, k, 1) -> source (i, j, k)
    limits = np.array(source.shape[::-1], dtype=np.float64) - 0.5 + INSIDE_TOLERANCE
    slices, rows, columns = target.shape
    i = np.arange(columns, dtype=np.float64)[None, :]
    j = np.arange(rows, dtype=np.float64)[:, None]
    for k in range(slices):
        outside = np.zeros((rows, columns), dtype=bool)
        for axis in range(3):
            index = to_index[axis, 0] * i + to_index[axis, 1] * j + (to_index[axis, 2] * k + to_index[axis, 3])
            outside |= (index < -0.5 - INSIDE_TOLERANCE) | (index > limits[axis])
        values[k][outside] = fill
