from rest_framework.parsers import JSONParser


class JsonBodyParser(JSONParser):
    """The contract's bodies are JSON, whatever Content-Type the caller sent (as the run
    path reads them): a form-encoded body is malformed JSON, never a 415. (Its own module:
    DRF imports the parser classes while config.api is still importing DRF.)"""

    media_type = "*/*"
