"""One APIRouter per resource: recommendations, events, students, admin, health."""
