"""``python -m lightning_recsys.demo``: the main job."""

from .run import main

if __name__ == "__main__":
    main()
