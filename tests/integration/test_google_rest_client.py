"""Google's generated REST client (GAPIC) against the native surface: it writes enums as numbers
and asks for answers with `$alt=json;enum-encoding=int`, as google-cloud-aiplatform's REST
transport (LangChain's ChatVertexAI) does for Vertex."""

from __future__ import annotations

import json
from collections.abc import Iterator

import google.oauth2.credentials
import pytest
from google.ai import generativelanguage_v1beta as glm
from google.ai.generativelanguage_v1beta.services.generative_service.transports import (
    GenerativeServiceRestTransport,
)

from openvertex.backends.fake import FakeBackend
from openvertex.protocol import generate_content as gc
from openvertex.settings import Settings
from tests.support.server import RunningServer, serve


@pytest.fixture
def rest_client(fake_server: RunningServer) -> Iterator[glm.GenerativeServiceClient]:
    transport = GenerativeServiceRestTransport(
        host=fake_server.url.removeprefix("http://"),
        url_scheme="http",
        credentials=google.oauth2.credentials.Credentials(token="test"),
    )
    yield glm.GenerativeServiceClient(transport=transport)


def test_tools_and_forced_calls_as_numbers(rest_client: glm.GenerativeServiceClient, fake: FakeBackend) -> None:
    call = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
    fake.add(
        [
            gc.GenerateContentResponse.model_validate(
                {
                    "candidates": [{"content": {"role": "model", "parts": [call]}, "finishReason": "STOP"}],
                    "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5},
                }
            )
        ]
    )
    city = glm.Schema(type_=glm.Type.STRING, format_="enum", enum=["Paris", "Rome"])
    declaration = glm.FunctionDeclaration(
        name="get_weather", parameters=glm.Schema(type_=glm.Type.OBJECT, properties={"city": city})
    )
    request = glm.GenerateContentRequest(
        model="models/gemini-2.5-flash",
        contents=[glm.Content(role="user", parts=[glm.Part(text="Weather in Paris?")])],
        tools=[glm.Tool(function_declarations=[declaration])],
        tool_config=glm.ToolConfig(
            function_calling_config=glm.FunctionCallingConfig(mode=glm.FunctionCallingConfig.Mode.ANY)
        ),
        safety_settings=[
            glm.SafetySetting(
                category=glm.HarmCategory.HARM_CATEGORY_HARASSMENT,
                threshold=glm.SafetySetting.HarmBlockThreshold.BLOCK_NONE,
            )
        ],
    )
    response = rest_client.generate_content(request=request)
    candidate = response.candidates[0]
    assert candidate.finish_reason == glm.Candidate.FinishReason.STOP
    assert candidate.content.parts[0].function_call.name == "get_weather"
    assert response.usage_metadata.total_token_count == 5
    received = fake.requests[-1]
    assert received.tool_config and received.tool_config.function_calling_config
    assert received.tool_config.function_calling_config.mode == "ANY"
    assert received.tools and received.tools[0].function_declarations
    parameters = received.tools[0].function_declarations[0].parameters
    assert parameters == {
        "type": "OBJECT",
        "properties": {"city": {"type": "STRING", "format": "enum", "enum": ["Paris", "Rome"]}},
    }
    assert received.safety_settings and received.safety_settings[0].category == "HARM_CATEGORY_HARASSMENT"


def test_count_tokens(rest_client: glm.GenerativeServiceClient) -> None:
    request = glm.CountTokensRequest(
        model="models/gemini-2.5-flash", contents=[glm.Content(role="user", parts=[glm.Part(text="alpha beta")])]
    )
    assert rest_client.count_tokens(request=request).total_tokens == 2


def test_a_local_answer_in_numbers(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same client on the embedded model: a structured answer under Gemini's own schema form."""
    with serve(Settings(port=0, state_dir=tmp_path_factory.mktemp("state"))) as server:
        transport = GenerativeServiceRestTransport(
            host=server.url.removeprefix("http://"),
            url_scheme="http",
            credentials=google.oauth2.credentials.Credentials(token="test"),
        )
        client = glm.GenerativeServiceClient(transport=transport)
        colour = glm.Schema(type_=glm.Type.STRING, format_="enum", enum=["red", "blue"])
        config = glm.GenerationConfig(
            response_mime_type="application/json",
            response_schema=glm.Schema(type_=glm.Type.OBJECT, properties={"colour": colour}, required=["colour"]),
            max_output_tokens=32,
            temperature=0,
        )
        request = glm.GenerateContentRequest(
            model="models/gemini-2.5-flash",
            contents=[glm.Content(role="user", parts=[glm.Part(text="Name a colour.")])],
            generation_config=config,
        )
        response = client.generate_content(request=request)
    assert response.candidates[0].finish_reason == glm.Candidate.FinishReason.STOP
    assert json.loads(response.candidates[0].content.parts[0].text)["colour"] in ("red", "blue")
