"""The framework clients teams put in front of an OpenAI-compatible server (LangChain's `ChatOpenAI`, LlamaIndex's
`OpenAILike`, the `litellm` SDK), in a virtualenv of their own, built once per machine under
~/.cache/llm-gateway/frameworks-<VERSION>/ (tests/backends/venv_cache.py).

Why not the test environment: these releases pin `openai<3`, and installing them beside the suite would
downgrade the `openai` client every other test uses. Their tests (tests/test_framework_clients.py) run
tests/framework_clients_run.py in this venv's interpreter. `_LOCK` is `pip freeze` of a venv where
`pip install langchain-openai llama-index-llms-openai-like litellm` resolved (2026-12-04); litellm reads its
bundled model list (LITELLM_LOCAL_MODEL_COST_MAP), never the network.
"""

from __future__ import annotations

from pathlib import Path

from tests.backends.venv_cache import VenvRecipe

VERSION = "lc1.8.1-li0.8.1-ll1.110.2"
ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1",
       "PYTHONWARNINGS": "ignore"}
_CHECK = "import langchain_openai, litellm; from llama_index.llms import openai_like"
_LOCK = """
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
aiosqlite==0.22.1
annotated-types==0.8.0
anyio==4.16.0
attrs==26.1.0
banks==2.5.1
boto3==1.44.8
botocore==1.44.8
certifi==2026.10.19.post1
charset-normalizer==3.5.3
click==8.5.1
cloudpickle==3.1.3
colorama==0.4.6
dataclasses-json==0.6.7
defusedxml==0.7.1
Deprecated==1.3.1
dirtyjson==1.0.8
distro==1.9.0
fastuuid==0.14.0
filelock==4.3.2
filetype==1.2.0
frozenlist==1.8.0
fsspec==2026.9.0
greenlet==3.5.6
griffe==2.4.1
griffecli==2.4.1
griffelib==2.4.1
h11==0.16.0
h2==4.4.1
hf-xet==1.8.0
hpack==4.2.0
httpcore==1.0.9
httpcore2==2.16.2
httpx==0.29.0
httpx2==2.16.2
huggingface_hub==2.4.0
hyperframe==6.1.0
idna==3.20
importlib_metadata==8.9.0
Jinja2==3.1.6
jiter==0.19.0
jmespath==1.1.0
joblib==1.6.0
jsonpatch==1.48
jsonpointer==3.12
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
langchain-core==1.8.3
langchain-openai==1.8.1
langchain-protocol==0.0.20
langsmith==0.15.1
litellm==1.110.2
llama-index-core==0.14.25
llama-index-instrumentation==0.6.0
llama-index-llms-openai==0.8.3
llama-index-llms-openai-like==0.8.1
llama-index-workflows==2.26.1
MarkupSafe==3.0.4
marshmallow==3.26.2
multidict==7.2.1
mypy_extensions==1.2.0
nest-asyncio==1.6.0
networkx==3.6.1
nltk==3.10.4
numpy==2.4.6
openai==2.54.0
orjson==3.13.0
packaging==26.4
pillow==13.0.0
platformdirs==4.14.9
propcache==0.5.4
pydantic==2.14.4
pydantic-settings==2.16.3
pydantic_core==2.50.5
python-dateutil==2.9.0.post0
python-dotenv==1.2.4
PyYAML==6.0.4
referencing==0.37.0
regex==2026.11.19
requests==2.34.2
requests-toolbelt==1.0.0
rpds-py==2026.9.1
s3transfer==0.19.3
six==1.17.0
sniffio==1.3.1
SQLAlchemy==2.1.9
tenacity==9.2.1
tiktoken==0.14.0
tinytag==2.3.2
tokenizers==0.23.3
tqdm==4.70.1
truststore==0.10.5
typing-inspect==0.9.0
typing-inspection==0.4.5
typing_extensions==4.16.0
urllib3==2.8.0
uuid_utils==0.19.0
websockets==17.4
wrapt==2.5.2
xxhash==4.1.0
yarl==1.25.1
zipp==4.1.2
zstandard==0.25.0
"""


class FrameworksUnavailable(RuntimeError):
    """The framework clients cannot be installed here; the message says why."""


VENV = VenvRecipe(f"frameworks-{VERSION}", _LOCK, _CHECK, python=(3, 11), unavailable=FrameworksUnavailable,
                  env=ENV, hint=lambda wheels: "")


def ensure_frameworks_venv() -> Path:
    return VENV.ensure("installing langchain-openai, llama-index-llms-openai-like and litellm", "importing them")
