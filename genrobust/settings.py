"""The library's settings, read from ``GENROBUST_*`` environment variables: where data and models live, torch
threads and the device. The service's settings (broker, API key, limits) are the service's own
(``worker.settings``), a layer on these."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Models trained with `genrobust train` and committed with the package; the store reads them too.
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENROBUST_", extra="ignore")

    data_dir: Path = Field(Path("./data"), description="Data root; datasets live in <data_dir>/<DatasetName>/raw.")
    model_dir: Path = Field(Path("./models"), description="Where trained models and resumable runs are written.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice).")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="Where models run: auto (CUDA when present, else CPU), cpu, cuda or cuda:N. "
                                    "The CLI's --device overrides it; workers use it for every task.")


@lru_cache
def get_settings() -> Settings:
    return Settings()
