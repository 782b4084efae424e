from fastapi import APIRouter

from app.api.routes import attack, classify, detect, health, jobs, models

api_router = APIRouter()
for module in (health, models, classify, attack, detect, jobs):
    api_router.include_router(module.router)
