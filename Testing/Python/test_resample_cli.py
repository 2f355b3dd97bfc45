"""The real Resample Scalar/Vector/DWI Volume CLI, run the way Slicer runs it (slicer_cli_double).

Volumes go in and out as MRML nodes of PyPI ``slicer-core`` (written and read by its
``vtkMRMLVolumeArchetypeStorageNode``), the executable is the one built from Slicer v5.8.1's source
(``../shared/slicer-cli``), and the call is the module's own:
``slicer.cli.runSync(slicer.modules.resamplescalarvectordwivolume, None, parameters, update_display=False)``.

The expected values are computed here from the geometry alone: a field that is linear in patient
coordinates must come back exactly (to float32 rounding) inside the hull of the input voxel
centres; the behaviour at the edges is the one ``../shared/slicer-cli/README.md`` documents
(linear clamps to the edge voxel in the half-voxel band, ``--default_pixel_value`` beyond it,
integer inputs truncated toward zero, nearest neighbour picks the nearest voxel).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
pytest.importorskip("slicer.util")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no MRML (install slicer-core)", allow_module_level=True)

import slicer_cli_double as cli_double  # noqa: E402

_REASON = cli_double.unavailable_reason()
if _REASON:
    pytest.skip(_REASON, allow_module_level=True)

from DoseAlignLib.api import Grid, Volume  # noqa: E402
from DoseAlignMRML import volumes as mrml  # noqa: E402

pytestmark = pytest.mark.slicer_core

# Voxel axes (columns: i, j, k directions in LPS) per orientation.
_C, _S = np.cos(np.deg2rad(20.0)), np.sin(np.deg2rad(20.0))


def _frame(row, column) -> np.ndarray:
    row = np.asarray(row, dtype=float) / np.linalg.norm(row)
    column = np.asarray(column, dtype=float) / np.linalg.norm(column)
    return np.column_stack([row, column, np.cross(row, column)])


DIRECTIONS = {
    "HFS": _frame([1, 0, 0], [0, 1, 0]),
    "FFS": _frame([-1, 0, 0], [0, 1, 0]),  # feet first: the slice normal points to the feet
    "HFP": _frame([-1, 0, 0], [0, -1, 0]),
    "oblique": _frame([_C, _S, 0.0], [-_S * 0.9, _C * 0.9, np.sqrt(1 - 0.81)]),
    "oblique2": _frame([0.9, -0.3, 0.3], [0.3, 0.95, 0.0]),
}
RAMP = np.array([0.8, -0.45, 0.3])  # Gy per mm along L, P, S
RAMP_OFFSET = 40.0


def make_grid(orientation: str, shape=(9, 10, 11), spacing=(2.5, 3.0, 2.0), centre=(12.0, -30.0, -250.0)) -> Grid:
    """A grid of ``shape`` (K, J, I) centred on ``centre`` (LPS) with the given axes."""
    direction = DIRECTIONS[orientation]
    spacing = np.asarray(spacing, dtype=float)
    half = (np.array(shape[::-1]) - 1) / 2.0 * spacing
    origin = np.asarray(centre, dtype=float) - direction @ half
    return Grid.from_spacing(shape, spacing, origin, direction)


def voxel_points(grid: Grid) -> np.ndarray:
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    return grid.index_to_lps(np.stack([i, j, k], axis=-1).astype(np.float64))


def ramp(points: np.ndarray) -> np.ndarray:
    return points @ RAMP + RAMP_OFFSET


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture()
def cli(scene, tmp_path, monkeypatch):
    return cli_double.install(monkeypatch, scene, tmp_path / "slicer-temp")


def run_resample(input_node, reference_node, interpolation="linear", default_pixel_value=0.0, **extra):
    """The module's call (DoseAlign.py resampleWithCli at 235dbbd): node IDs, runSync, status check."""
    output_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "output")
    parameters = {
        "inputVolume": input_node.GetID(),
        "outputVolume": output_node.GetID(),
        "referenceVolume": reference_node.GetID(),
        "interpolationType": interpolation,
        "defaultPixelValue": default_pixel_value,
    }
    parameters.update(extra)
    cli_node = slicer.cli.runSync(slicer.modules.resamplescalarvectordwivolume, None, parameters, update_display=False)
    return cli_node, output_node


def add_volume(scene, array, grid, name):
    return mrml.volume_node_from_volume(Volume(array, grid), scene, name)


def continuous_index(grid: Grid, points: np.ndarray) -> np.ndarray:
    return grid.lps_to_index(points)


# ---- the module description and the command line ----------------------------------------------


def test_executable_describes_the_module_as_the_shared_xml(cli):
    """Slicer reads the description from ``--xml``; it must be the XML the project checks its parameters against."""
    if not cli_double.SHARED_XML.is_file():
        pytest.skip(f"{cli_double.SHARED_XML} is absent")
    shared = cli_double.parse_description(cli_double.SHARED_XML.read_text(encoding="utf-8"))

    def key(p):
        return (p.tag, p.name, p.flag, p.longflag, p.index, p.channel, p.default, tuple(p.elements))

    assert [key(p) for p in cli.description.parameters] == [key(p) for p in shared.parameters]
    assert cli.description.title == "Resample Scalar/Vector/DWI Volume"


def test_command_line_is_derived_from_the_xml(scene, cli):
    grid = make_grid("HFS", shape=(3, 4, 5))
    input_node = add_volume(scene, np.zeros(grid.shape, np.float32), grid, "in")
    reference_node = add_volume(scene, np.zeros(grid.shape, np.uint8), grid, "ref")
    cli_node, output_node = run_resample(input_node, reference_node, "nn", -1000.0)
    assert cli_node.GetStatus() == cli_node.Completed, cli_node.GetErrorText()
    command = cli.logic().values_of(cli_node).command_line
    description = cli.description

    # positional parameters last, in index order: input file then output file, named after the node IDs
    indexed = sorted((p for p in description.parameters if p.index), key=lambda p: int(p.index))
    assert [p.name for p in indexed] == ["inputVolume", "outputVolume"]
    tail = command[-len(indexed) :]
    for parameter, path, node in zip(indexed, tail, (input_node, output_node)):
        assert path.endswith(".nrrd") and cli_double._node_id_letters(node.GetID()) in path, parameter.name
    # the reference goes through its longflag, as a written file
    reference = description.parameter("referenceVolume")
    at = command.index("--" + reference.longflag)
    assert cli_double._node_id_letters(reference_node.GetID()) in command[at + 1]
    # every value-carrying parameter with a flag appears once, with the value set or its XML default
    given = {"interpolationType": "nn", "defaultPixelValue": "-1000"}
    for parameter in description.parameters:
        flag = "--" + parameter.longflag if parameter.longflag else ("-" + parameter.flag if parameter.flag else None)
        if flag is None:
            continue
        occurrences = [n for n, word in enumerate(command) if word == flag]
        if parameter.tag == "boolean":
            assert parameter.default == "false" and not occurrences, parameter.name  # only written when true
        elif parameter.tag in ("image", "transform", "point"):
            assert len(occurrences) == (1 if parameter.name == "referenceVolume" else 0), parameter.name
        else:
            assert len(occurrences) == 1, parameter.name
            assert command[occurrences[0] + 1] == given.get(parameter.name, parameter.default), parameter.name


@pytest.mark.parametrize(
    ("value", "expected"),
    [(-1000.0, "-1000"), (np.float64(-1000.0), "-1000"), (0.1234567, "0.123457"), (np.float32(-1000.0), "0")],
    ids=["float", "float64", "six-digits", "float32-dropped"],
)
def test_parameter_values_as_slicer_writes_them(scene, cli, value, expected, capsys):
    """cli.py dispatches on Python types; SetParameterAsDouble prints 6 significant digits. A numpy
    float32 is neither float nor int: cli.py prints "unsupported type" and the XML default is used."""
    grid = make_grid("HFS", shape=(2, 3, 4))
    input_node = add_volume(scene, np.zeros(grid.shape, np.float32), grid, "in")
    cli_node, _ = run_resample(input_node, input_node, "linear", value)
    command = cli.logic().values_of(cli_node).command_line
    assert command[command.index("--default_pixel_value") + 1] == expected
    assert ("unsupported type" in capsys.readouterr().out) == isinstance(value, np.float32)


def test_unknown_parameter_names_are_ignored_silently(scene, cli):
    grid = make_grid("HFS", shape=(2, 3, 4))
    input_node = add_volume(scene, np.zeros(grid.shape, np.float32), grid, "in")
    cli_node, _ = run_resample(input_node, input_node, interpolation="linear", interpolator="nn")
    assert cli.logic().values_of(cli_node).unknown == ["interpolator"]
    assert cli_node.GetStatus() == cli_node.Completed


# ---- values ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "target"),
    [("oblique", "HFS"), ("FFS", "oblique"), ("HFP", "oblique2"), ("oblique2", "FFS")],
)
def test_linear_ramp_is_exact_inside_the_hull(scene, cli, source, target):
    input_grid = make_grid(source)
    reference_grid = make_grid(target, shape=(12, 13, 14), spacing=(2.2, 1.9, 2.6), centre=(13.0, -29.0, -251.0))
    input_node = add_volume(scene, ramp(voxel_points(input_grid)).astype(np.float32), input_grid, "dose")
    reference_node = add_volume(scene, np.zeros(reference_grid.shape, np.int16), reference_grid, "ct")

    cli_node, output_node = run_resample(input_node, reference_node, "linear", -1000.0)
    assert not cli_node.GetStatus() & cli_node.ErrorsMask, cli_node.GetErrorText()
    assert cli_node.GetStatus() == cli_node.Completed

    output = mrml.volume_from_node(output_node)
    assert output.grid.equal(reference_grid)
    assert output.array.dtype == np.float32
    points = voxel_points(reference_grid)
    index = continuous_index(input_grid, points)
    upper = np.array(input_grid.shape[::-1]) - 1
    inside = np.all((index >= 1e-6) & (index <= upper - 1e-6), axis=-1)
    assert inside.sum() > 200 and (~inside).sum() > 200  # the case covers both
    expected = ramp(points)
    tolerance = 4 * np.spacing(np.float32(np.abs(expected).max()))
    assert np.abs(output.array[inside] - expected[inside]).max() <= tolerance


def test_edge_band_clamps_and_beyond_is_the_default_value(scene, cli):
    input_grid = make_grid("oblique", shape=(6, 7, 8))
    reference_grid = make_grid("HFS", shape=(20, 22, 24), spacing=(1.3, 1.3, 1.3), centre=(12.3, -30.2, -249.7))
    values = ramp(voxel_points(input_grid)).astype(np.float32)
    input_node = add_volume(scene, values, input_grid, "dose")
    reference_node = add_volume(scene, np.zeros(reference_grid.shape, np.int16), reference_grid, "ct")
    cli_node, output_node = run_resample(input_node, reference_node, "linear", -1000.0)
    assert cli_node.GetStatus() == cli_node.Completed, cli_node.GetErrorText()
    output = mrml.volume_from_node(output_node).array

    index = continuous_index(input_grid, voxel_points(reference_grid))
    size = np.array(input_grid.shape[::-1], dtype=float)
    margin = 1e-4
    beyond = np.any((index < -0.5 - margin) | (index > size - 0.5 + margin), axis=-1)
    within = np.all((index > -0.5 + margin) & (index < size - 0.5 - margin), axis=-1)
    band = within & np.any((index < 0) | (index > size - 1), axis=-1)
    assert beyond.sum() > 100 and band.sum() > 20
    assert np.all(output[beyond] == np.float32(-1000.0))
    # in the band: the ramp at the point moved onto the hull (ITK clamps the neighbours to the edge)
    clamped = np.clip(index[band], 0, size - 1)
    expected = ramp(input_grid.index_to_lps(clamped))
    assert np.abs(output[band] - expected).max() <= 4 * np.spacing(np.float32(np.abs(expected).max()))


def test_nearest_neighbour_takes_the_nearest_voxel(scene, cli):
    input_grid = make_grid("oblique2", shape=(7, 8, 9))
    reference_grid = make_grid("FFS", shape=(10, 11, 12), spacing=(1.7, 2.1, 1.9), centre=(12.2, -30.4, -250.3))
    rng = np.random.default_rng(15)
    values = rng.uniform(-50, 50, input_grid.shape).astype(np.float32)
    input_node = add_volume(scene, values, input_grid, "dose")
    reference_node = add_volume(scene, np.zeros(reference_grid.shape, np.int16), reference_grid, "ct")
    cli_node, output_node = run_resample(input_node, reference_node, "nn", -1000.0)
    assert cli_node.GetStatus() == cli_node.Completed, cli_node.GetErrorText()
    output = mrml.volume_from_node(output_node).array

    index = continuous_index(input_grid, voxel_points(reference_grid))
    size = np.array(input_grid.shape[::-1])
    nearest = np.rint(index).astype(int)
    clear = np.all(np.abs(np.abs(index - np.floor(index)) - 0.5) > 1e-3, axis=-1)  # no ties
    inside = np.all((nearest >= 0) & (nearest < size), axis=-1) & clear
    assert inside.sum() > 300
    i, j, k = nearest[inside].T
    np.testing.assert_array_equal(output[inside], values[k, j, i])


def test_integer_input_stays_integer_and_truncates_toward_zero(scene, cli):
    input_grid = make_grid("HFS", shape=(8, 9, 10), spacing=(2.0, 2.0, 2.0))
    k, j, i = np.meshgrid(*(np.arange(n) for n in input_grid.shape), indexing="ij")
    values = (7 * i - 5 * j + 3 * k - 30).astype(np.int16)  # linear in the index: interpolation is exact
    input_node = add_volume(scene, values, input_grid, "ct")
    reference_grid = make_grid("oblique", shape=(9, 9, 9), spacing=(1.1, 1.3, 1.7), centre=(12.0, -30.0, -250.0))
    reference_node = add_volume(scene, np.zeros(reference_grid.shape, np.uint8), reference_grid, "grid")
    cli_node, output_node = run_resample(input_node, reference_node, "linear", -1000.0)
    assert cli_node.GetStatus() == cli_node.Completed, cli_node.GetErrorText()
    output = mrml.volume_from_node(output_node).array
    assert output.dtype == np.int16

    index = continuous_index(input_grid, voxel_points(reference_grid))
    upper = np.array(input_grid.shape[::-1]) - 1
    inside = np.all((index >= 1e-6) & (index <= upper - 1e-6), axis=-1)
    exact = 7 * index[..., 0] - 5 * index[..., 1] + 3 * index[..., 2] - 30
    fraction = np.abs(exact - np.rint(exact))
    clear = inside & (fraction > 1e-3)  # not at an integer, where rounding noise may go either way
    negative = clear & (exact < 0)
    assert clear.sum() > 200 and negative.sum() > 50
    np.testing.assert_array_equal(output[clear], np.trunc(exact[clear]).astype(np.int16))
    assert np.any(np.trunc(exact[negative]) != np.floor(exact[negative]))  # toward zero, not down


# ---- status and files ------------------------------------------------------------------------------


def test_a_failing_run_sets_errors_and_leaves_the_output_empty(scene, cli):
    grid = make_grid("HFS", shape=(3, 4, 5))
    input_node = add_volume(scene, np.ones(grid.shape, np.float32), grid, "in")
    cli_node, output_node = run_resample(input_node, input_node, "cubic", 0.0)
    assert cli_node.GetStatus() == cli_node.CompletedWithErrors
    assert cli_node.GetStatus() & cli_node.ErrorsMask
    assert "cubic" in cli_node.GetErrorText()
    assert output_node.GetImageData() is None


def test_a_missing_input_node_fails_before_running(scene, cli):
    grid = make_grid("HFS", shape=(3, 4, 5))
    reference_node = add_volume(scene, np.ones(grid.shape, np.float32), grid, "ref")
    output_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "out")
    parameters = {"outputVolume": output_node.GetID(), "referenceVolume": reference_node.GetID()}
    cli_node = slicer.cli.runSync(cli, None, parameters, update_display=False)
    assert cli_node.GetStatus() == cli_node.CompletedWithErrors
    label = cli.description.parameter("inputVolume").label
    assert cli_node.GetErrorText() == f'No input data assigned to "{label}"'
    assert cli.logic().values_of(cli_node).command_line == []


@pytest.mark.parametrize("delete", [True, False])
def test_temporary_files(scene, cli, delete):
    grid = make_grid("FFS", shape=(3, 4, 5))
    input_node = add_volume(scene, np.ones(grid.shape, np.float32), grid, "in")
    output_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "out")
    parameters = {"inputVolume": input_node, "outputVolume": output_node, "referenceVolume": input_node}
    cli_node = slicer.cli.runSync(cli, None, parameters, delete_temporary_files=delete, update_display=False)
    assert cli_node.GetStatus() == cli_node.Completed, cli_node.GetErrorText()
    left = sorted(os.listdir(cli.temporary_directory))
    assert left == (
        [] if delete else sorted(os.path.basename(p) for p in cli.logic().values_of(cli_node).command_line[-2:])
    )
    # read back as Slicer does: a default storage node without a file name, a display node
    assert output_node.GetStorageNode() is not None and not output_node.GetStorageNode().GetFileName()
    assert output_node.GetDisplayNode() is not None
    assert mrml.volume_from_node(output_node).grid.equal(grid)
