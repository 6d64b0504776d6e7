"""``python -m caloforge`` (what ``torchrun -m caloforge train ...`` starts on every rank)."""

from caloforge._entry import main

if __name__ == "__main__":
    main()
