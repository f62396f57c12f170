"""tools / functions / tool_choice / web_search_options → tools[] and toolConfig (spec §2.7)."""

from __future__ import annotations

import re

from pydantic.alias_generators import to_camel

from openvertex.errors import InvalidArgumentError
from openvertex.protocol import chat_completions as oa
from openvertex.protocol import generate_content as gc
from openvertex.translate.schema import check_not_recursive
from openvertex.translate.tables import (
    FUNCTION_NAME_PATTERN,
    MAX_FUNCTION_DECLARATIONS,
    TOOL_CHOICE_TO_MODE,
)

_NAME = re.compile(FUNCTION_NAME_PATTERN)


def _declaration(function: oa.FunctionDefinition, *, param: str) -> gc.FunctionDeclaration:
    if not _NAME.fullmatch(function.name):
        raise InvalidArgumentError(
            "a function name must start with a letter or underscore, use only a-z, A-Z, 0-9, _, . and -,"
            " and be at most 64 characters",
            param=f"{param}.name",
        )
    if function.parameters is not None:
        check_not_recursive(function.parameters, param=f"{param}.parameters")
    return gc.FunctionDeclaration(
        name=function.name, description=function.description, parameters_json_schema=function.parameters
    )


def _declarations(request: oa.ChatCompletionRequest) -> list[gc.FunctionDeclaration]:
    declarations = [
        _declaration(tool.function, param=f"tools[{i}].function") for i, tool in enumerate(request.tools or [])
    ] + [_declaration(function, param=f"functions[{i}]") for i, function in enumerate(request.functions or [])]
    if len(declarations) > MAX_FUNCTION_DECLARATIONS:
        raise InvalidArgumentError(
            f"at most {MAX_FUNCTION_DECLARATIONS} function declarations are allowed", param="tools"
        )
    return declarations


def request_to_tools(request: oa.ChatCompletionRequest) -> list[gc.Tool] | None:
    tools: list[gc.Tool] = []
    declarations = _declarations(request)
    if declarations:
        tools.append(gc.Tool(function_declarations=declarations))
    for index, native in enumerate(request.google_extensions.tools or []):
        try:
            # REST JSON names native tools in lowerCamelCase (code_execution → codeExecution).
            tools.append(gc.Tool.from_wire({to_camel(key): value for key, value in native.items()}))
        except ValueError as error:
            raise InvalidArgumentError(
                f"not a valid Gemini tool: {error}", param=f"extra_body.google.tools[{index}]"
            ) from None
    if request.web_search_options is not None:
        tools.append(gc.Tool(google_search={}))  # "No sub-options are supported" [D V-OV]
    return tools or None


def _choice_to_config(
    choice: str | oa.NamedToolChoice | oa.NamedFunction, names: set[str], param: str
) -> gc.FunctionCallingConfig:
    if choice not in ("none", "auto") and not names:
        raise InvalidArgumentError("a function must be called, but no functions are declared", param=param)
    if isinstance(choice, str):
        return gc.FunctionCallingConfig(mode=TOOL_CHOICE_TO_MODE[choice])
    name = choice.function.name if isinstance(choice, oa.NamedToolChoice) else choice.name
    if name not in names:
        raise InvalidArgumentError(f"names a function that is not declared: {name!r}", param=param)
    return gc.FunctionCallingConfig(mode="ANY", allowed_function_names=[name])  # spec §2.7 [I]


def request_to_tool_config(request: oa.ChatCompletionRequest) -> gc.ToolConfig | None:
    names = {tool.function.name for tool in request.tools or []} | {f.name for f in request.functions or []}
    config: gc.FunctionCallingConfig | None = None
    if request.tool_choice is not None:
        config = _choice_to_config(request.tool_choice, names, "tool_choice")
    elif request.function_call is not None:
        config = _choice_to_config(request.function_call, names, "function_call")
    streamed = request.google_extensions.stream_function_call_arguments
    if streamed is not None:
        config = config or gc.FunctionCallingConfig()
        config.stream_function_call_arguments = streamed
    return gc.ToolConfig(function_calling_config=config) if config is not None else None
