"""One module per section of the UI; each holds an APIRouter whose pages all require a login."""
