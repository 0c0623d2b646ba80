"""The generative process: world, cells, concepts, exact counts and counterfactuals.

Public API: :func:`simulate`, :class:`Dataset`, :func:`poisson_ppf`,
:func:`make_tasks`, :func:`corrupt`, :func:`write_bundle`, :func:`read_bundle`,
:class:`SimulationParams`, and the exact posterior of cells' exogenous noise and
twins (:func:`cell_posterior`, :class:`TwinPosterior`, :func:`same_law_sample`;
:func:`perturb_posterior` for the ``perturb-identifiability`` process).
"""

from simcell.simulator.bundle import Bundle, bundle_identity, read_bundle, write_bundle
from simcell.simulator.cells import CellStates, solve_concepts
from simcell.simulator.corrupt import CorruptionRecord, corrupt
from simcell.simulator.params import SimulationParams
from simcell.simulator.poisson import poisson_ppf
from simcell.simulator.posterior import (
    CellPosterior,
    TwinPosterior,
    cell_posterior,
    concept_dag,
    same_law_sample,
)
from simcell.simulator.posterior_perturb import PerturbTwinPosterior, perturb_posterior
from simcell.simulator.process import Dataset, simulate
from simcell.simulator.stream import generate_bundle
from simcell.simulator.tasks import Task, make_tasks
from simcell.simulator.world import World, draw_world

__all__ = [
    "Bundle",
    "CellPosterior",
    "CellStates",
    "CorruptionRecord",
    "Dataset",
    "PerturbTwinPosterior",
    "SimulationParams",
    "Task",
    "TwinPosterior",
    "World",
    "bundle_identity",
    "cell_posterior",
    "concept_dag",
    "corrupt",
    "draw_world",
    "generate_bundle",
    "make_tasks",
    "perturb_posterior",
    "poisson_ppf",
    "read_bundle",
    "same_law_sample",
    "simulate",
    "solve_concepts",
    "write_bundle",
]
