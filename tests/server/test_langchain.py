#!/usr/bin/env python3
"""LangChain's `with_structured_output` and `bind_tools` against `grok1 serve`.

    python3 tests/server/test_langchain.py path/to/grok1

Starts the server with the built-in demo model (random weights: the grammar
alone shapes the output), runs every check through `langchain-openai`'s
ChatOpenAI, and prints `N passed, M failed`. Exits non-zero if anything failed.
"""
import json
import re
import subprocess
import sys
import threading
import time
import traceback
from typing import Literal

import openai
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field


def start(binary):
    proc = subprocess.Popen([binary, "serve", "--port", "0", "--max-batch", "4"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 60
    for line in proc.stderr:
        match = re.search(r"listening on (http://[0-9.:]+)", line)
        if match:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, match.group(1)
        if time.time() > deadline:
            break
    raise RuntimeError("the server did not start")


class Address(BaseModel):
    city: str = Field(max_length=16)
    zip_code: int = Field(ge=1000, le=99999)


class Person(BaseModel):
    """A person, as the model describes one."""
    name: str = Field(max_length=16)
    age: int = Field(ge=0, le=120)
    mood: Literal["happy", "sad", "calm"]
    nicknames: list[str] = Field(max_length=4)
    address: Address


@tool
def get_weather(city: str = Field(max_length=16), unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
    """The weather in a city."""
    return f"21 degrees {unit} in {city}"


def main():
    binary = sys.argv[1]
    proc, base = start(binary)
    llm = ChatOpenAI(base_url=base + "/v1", api_key="unused", model="grok1-demo", temperature=0,
                     max_tokens=300, max_retries=0, timeout=300)
    results = []

    def check(name):
        def wrap(fn):
            try:
                fn()
                results.append((name, None))
                print(f"ok   {name}")
            except Exception:
                results.append((name, traceback.format_exc()))
                print(f"FAIL {name}\n{traceback.format_exc()}")
        return wrap

    @check("with_structured_output (json_schema, strict) gives a validated Person")
    def _():
        structured = llm.with_structured_output(Person, method="json_schema", strict=True, include_raw=True)
        out = structured.invoke("Describe a person.")
        assert out["parsing_error"] is None, out
        person = out["parsed"]
        assert isinstance(person, Person), out
        assert len(person.name) <= 16 and 0 <= person.age <= 120 and len(person.nicknames) <= 4, person
        # What the server sent is the compact JSON the object came from.
        raw = out["raw"].content
        assert Person.model_validate_json(raw) == person, raw

    @check("with_structured_output (json_mode) gives a JSON object or stops at the limit")
    def _():
        json_mode = llm.bind(max_tokens=24).with_structured_output(method="json_mode")
        try:
            out = json_mode.invoke("Some JSON please.")
            assert isinstance(out, dict), out
        except openai.LengthFinishReasonError as e:
            # The SDK refuses to parse a reply cut at the limit: it must be one.
            choice = e.completion.choices[0]
            assert choice.finish_reason == "length" and choice.message.content.startswith("{"), choice

    @check("bind_tools: a forced call parses into tool_calls, and its result goes back")
    def _():
        with_tools = llm.bind_tools([get_weather], tool_choice="get_weather")
        question = HumanMessage("What is the weather in Paris?")
        ai = with_tools.invoke([question])
        assert ai.response_metadata.get("finish_reason") == "tool_calls", ai
        assert len(ai.tool_calls) == 1, ai.tool_calls
        call = ai.tool_calls[0]
        assert call["name"] == "get_weather" and call["id"], call
        # `unit` has a default: the call may leave it out, and nothing else is added.
        assert "city" in call["args"] and set(call["args"]) <= {"city", "unit"}, call
        assert len(call["args"]["city"]) <= 16, call
        assert call["args"].get("unit", "celsius") in ("celsius", "fahrenheit"), call
        result = get_weather.invoke(call)
        assert isinstance(result, ToolMessage) and result.tool_call_id == call["id"], result
        # The conversation with the call and its result is accepted, tools still bound.
        reply = llm.bind_tools([get_weather]).bind(max_tokens=8).invoke([question, ai, result])
        assert reply.response_metadata.get("finish_reason") in ("stop", "length", "tool_calls"), reply

    @check("bind_tools streamed: the chunks add up to the same call")
    def _():
        with_tools = llm.bind_tools([get_weather], tool_choice="required")
        whole = with_tools.invoke("Weather in Oslo?")
        merged = None
        for chunk in with_tools.stream("Weather in Oslo?"):
            merged = chunk if merged is None else merged + chunk
        assert merged.tool_calls and merged.tool_calls[0]["name"] == "get_weather", merged
        # Greedy: the streamed call is the whole one.
        assert merged.tool_calls[0]["args"] == whole.tool_calls[0]["args"], (merged.tool_calls, whole.tool_calls)

    proc.terminate()
    proc.wait(timeout=30)
    failed = [name for name, err in results if err]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
