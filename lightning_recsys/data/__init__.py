"""Data: the recsys batch type, the model contract (how to call a model on a batch, where its labels
are) and data modules (synthetic Criteo-like, MovieLens-100K, Women's E-Commerce Clothing Reviews, and
``TabularDataModule`` for your own CSV file or columns)."""

from .batch import FeatureSpec, RecsysBatch, SparseFeature, collate_samples
from .clothing_reviews import ClothingReviewsDataModule
from .contract import ModelContract
from .movielens import MovieLens100KDataModule
from .movielens_items import MovieLens100KItemsDataModule
from .resumable import ResumableDataLoader
from .synthetic import CRITEO_KAGGLE_CARDINALITIES, PlantedCTRModel, SyntheticCTRDataModule, SyntheticCTRDataset
from .tabular import TabularDataModule

__all__ = [
    "CRITEO_KAGGLE_CARDINALITIES",
    "ClothingReviewsDataModule",
    "FeatureSpec",
    "ModelContract",
    "MovieLens100KDataModule",
    "MovieLens100KItemsDataModule",
    "PlantedCTRModel",
    "RecsysBatch",
    "ResumableDataLoader",
    "SparseFeature",
    "SyntheticCTRDataModule",
    "SyntheticCTRDataset",
    "TabularDataModule",
    "collate_samples",
]
