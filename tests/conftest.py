# Fixture registration only (tests/ is not a package; pytest puts this folder on sys.path).
from slurm_cluster import slurm_cluster  # noqa: F401  (the session-scoped Slurm cluster fixture)
