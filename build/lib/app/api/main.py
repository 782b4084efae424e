from fastapi import APIRouter

from app.api.routes import attack, classify, datasets, detect, health, jobs, models, web

api_router = APIRouter()
for module in (health, models, datasets, classify, attack, detect, jobs, web):
    api_router.include_router(module.router)
