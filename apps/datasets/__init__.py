"""Local evaluation datasets: ImageNet-style image folders (and ILSVRC2012 preparation), GLUE CoLA.

Nothing is downloaded: each loader reads files already on the coordinator.
"""

from pipeedge.apps.datasets.glue import ColaExample, load_cola
from pipeedge.apps.datasets.imagenet import ImageFolder, PrepareReport, prepare_ilsvrc2012

__all__ = ["ColaExample", "ImageFolder", "PrepareReport", "load_cola", "prepare_ilsvrc2012"]
