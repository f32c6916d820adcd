"""A simulated TV that runs any registered call, so the router and the demo *do* something observable.

Handlers work over the registry's function families rather than one function at a time: a function's
`template_key` ("level.set", "choice.list_options", "toggle.turn_on", "query") says which family verb it
is, and its name (`domain.object.verb[_attribute]`) names the setting it acts on. Extra family parameters
(a smart-home `room`) scope the setting, so the bedroom light and the kitchen light are separate devices.

The hand-written functions (no family) go through a small table of named handlers for the state a TV
really has (power, channel, input, app, playback, timers, favourites, factory reset); the rest fall back to
one of two generic behaviours by their action: read-only actions (`get*`, `list*`, `query*`, `show*` …)
report what the TV knows, other actions record themselves as the object's status (`smarthome.curtain` →
"open", `smarthome.door_lock` → "lock").
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from tvcall.functions.inverse import inverse_calls
from tvcall.functions.registry import Registry
from tvcall.functions.spec import FunctionSpec
from tvcall.functions.validate import call_errors

FAMILY_VALUE_PARAMS = ("value", "step")
READ_ONLY_PREFIXES = ("get", "list", "query", "show", "find", "check", "about", "browse", "locate", "search", "by_")
LEVEL_DEFAULTS: dict[str, int] = {"sound.volume": 20, "sound.headphone_volume": 20, "sound.startup_volume": 20}
FALLBACK_BOUNDS = (0, 100)
HISTORY_LIMIT = 50
UNMUTE_TIMER = "unmute_timer"
SOURCES_IN_ORDER = ("antenna", "cable", "hdmi1", "hdmi2", "hdmi3", "hdmi4", "av", "component", "usb", "vga")


class TVState(BaseModel):
    power: Literal["on", "standby", "off"] = "on"
    channel: int = 1
    channel_name: str | None = None
    previous_channel: int | None = None
    input: str = "antenna"
    app: str | None = None
    playback: Literal["stopped", "playing", "paused"] = "stopped"
    position_s: int = 0
    timers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    favorites: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict, description="family settings: 'domain.object[.attribute][@scope]' → value")
    status: dict[str, str] = Field(default_factory=dict, description="last action of objects without a family, e.g. curtains")
    history: list[dict[str, Any]] = Field(default_factory=list, description="the last calls executed, oldest first")
    factory_resets: int = 0


class CallResult(BaseModel):
    ok: bool = True
    name: str
    message: str = Field(description="what was done, in the request's language")
    data: dict[str, Any] = Field(default_factory=dict, description="values read or changed")
    undo: list[dict[str, Any]] = Field(default_factory=list, description="the calls that take this one back, in order "
                                       "(empty: it changed nothing, or nothing can restore it)")


class Family(BaseModel):
    kind: str  # level, choice, toggle, query
    verb: str
    setting: str  # domain.object[.attribute]


def family_of(spec: FunctionSpec) -> Family | None:
    if not spec.template_key:
        return None
    domain, obj, action = spec.name.split(".")
    if spec.template_key == "query":
        return Family(kind="query", verb=action, setting=f"{domain}.{obj}")
    kind, verb = spec.template_key.split(".")
    attribute = action[len(verb) + 1:] if action != verb else ""
    return Family(kind=kind, verb=verb, setting=f"{domain}.{obj}" + (f".{attribute}" if attribute else ""))


def scope_of(arguments: dict[str, Any]) -> str:
    extras = sorted((k, v) for k, v in arguments.items() if k not in FAMILY_VALUE_PARAMS)
    return "".join(f"@{k}={v}" for k, v in extras)


class SimulatedTV:
    """The state and the handlers; `call` validates a call against the registry and runs it."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.state = TVState()
        self._lock = threading.RLock()
        self._named: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = named_handlers(self)

    # --- the public surface -------------------------------------------------------------------------
    def call(self, name: str, arguments: dict[str, Any], lang: str = "en") -> CallResult:
        errors = call_errors(self.registry, name, arguments)
        if errors:
            raise ValueError(f"invalid call {name}: {'; '.join(errors)}")
        spec = self.registry[name]
        with self._lock:
            if not name.startswith(("power.tv.", "smarthome.", "info.")):
                self.state.power = "on"  # a far-field voice command wakes the TV
            before = self.state.model_copy(deep=True)
            data = self._run(spec, arguments)
            undo = inverse_calls(self, name, arguments, before)
            self.state.history = [*self.state.history, {"name": name, "arguments": arguments}][-HISTORY_LIMIT:]
        return CallResult(name=name, message=spec.description.forms(lang)[0], data=data,
                          undo=[{"name": n, "arguments": a} for n, a in undo])

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.state.model_dump()

    @property
    def volume(self) -> int:
        return self.setting("sound.volume", "")

    @property
    def muted(self) -> bool:
        return self.setting("sound.mute", "")

    def setting(self, setting: str, scope: str) -> Any:
        return self.state.settings.get(setting + scope, self.default(setting))

    def default(self, setting: str) -> Any:
        domain, obj, *attribute = setting.split(".")
        names = self.registry.functions
        suffix = f"_{attribute[0]}" if attribute else ""
        if f"{domain}.{obj}.get_status{suffix}" in names:
            return False
        value = self.value_schema(setting)
        if "enum" in value:
            return value["enum"][0]
        low, high = self.bounds(setting)
        return LEVEL_DEFAULTS.get(setting, (low + high) // 2)

    def bounds(self, setting: str) -> tuple[int, int]:
        value = self.value_schema(setting)
        return (value["minimum"], value["maximum"]) if "minimum" in value else FALLBACK_BOUNDS

    def value_schema(self, setting: str) -> dict[str, Any]:
        """The `value` schema of the setting's family `set` function ({} if the family has none)."""
        domain, obj, *attribute = setting.split(".")
        setter = self.registry.functions.get(f"{domain}.{obj}.set" + (f"_{attribute[0]}" if attribute else ""))
        if setter is None or not (setter.template_key or "").endswith(".set"):
            return {}
        return setter.properties.get("value", {})

    # --- dispatch -----------------------------------------------------------------------------------
    def _run(self, spec: FunctionSpec, arguments: dict[str, Any]) -> dict[str, Any]:
        family = family_of(spec)
        if family is not None:
            return self._family(spec, family, arguments)
        if spec.name in self._named:
            return self._named[spec.name](arguments)
        domain, obj, action = spec.name.split(".")
        key = f"{domain}.{obj}{scope_of(arguments)}"
        if action.startswith(READ_ONLY_PREFIXES):
            return {"object": key, "status": self.state.status.get(key), "arguments": arguments,
                    "note": "the simulated TV has no live data for this"}
        self.state.status[key] = action
        return {"object": key, "status": action, "arguments": arguments}

    def _family(self, spec: FunctionSpec, family: Family, arguments: dict[str, Any]) -> dict[str, Any]:
        if family.kind == "query":
            return {"query": family.verb, "arguments": arguments, "answer": None,
                    "note": "the simulated TV has no content database"}
        key, scope = family.setting, scope_of(arguments)
        current = self.setting(key, scope)
        verb = family.verb
        if verb in ("get", "get_status"):
            return {"setting": key + scope, "value": current}
        if verb == "list_options":
            return {"setting": key + scope, "options": self.value_schema(key).get("enum", [current])}
        if verb in ("increase", "decrease"):
            low, high = self.bounds(key)
            step = arguments.get("step", max(1, (high - low) // 20))
            value = min(high, max(low, current + (step if verb == "increase" else -step)))
        else:
            value = {"set": arguments.get("value"), "reset": self.default(key), "turn_on": True, "turn_off": False}[verb]
        self.state.settings[key + scope] = value
        if key == "sound.mute" and value is False:  # unmuted by hand: mute_for's timer has nothing left to do
            self.state.timers = {k: v for k, v in self.state.timers.items() if k != UNMUTE_TIMER}
        return {"setting": key + scope, "previous": current, "value": value}

    def reset_settings(self, domain: str) -> dict[str, Any]:
        removed = [k for k in self.state.settings if k.startswith(f"{domain}.")]
        for key in removed:
            del self.state.settings[key]
        return {"reset": sorted(removed)}

    def factory_reset(self) -> dict[str, Any]:
        count = self.state.factory_resets + 1
        self.state = TVState(factory_resets=count, history=self.state.history)  # the audit trail survives
        return {"factory_resets": count}


def named_handlers(tv: SimulatedTV) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    """Handlers of the hand-written functions that change the TV's own state."""
    def s() -> TVState:  # looked up on each call: a factory reset replaces the state object
        return tv.state

    def update(**changes: Any) -> dict[str, Any]:
        for field, value in changes.items():
            setattr(s(), field, value)
        return changes

    def switch_channel(number: int | None = None, name: str | None = None) -> dict[str, Any]:
        return update(previous_channel=s().channel, channel=number if number is not None else s().channel,
                      channel_name=name, input="antenna", app=None)

    def step_channel(delta: int) -> dict[str, Any]:
        return switch_channel(max(1, s().channel + delta))

    def set_timer(timer: str, arguments: dict[str, Any]) -> dict[str, Any]:
        s().timers = {**s().timers, timer: dict(arguments)}
        return {"timer": timer, **arguments}

    def cancel_timer(timer: str) -> dict[str, Any]:
        s().timers = {k: v for k, v in s().timers.items() if k != timer}
        return {"timer": timer, "cancelled": True}

    def extend_sleep(minutes: int) -> dict[str, Any]:
        current = s().timers.get("sleep_timer", {}).get("minutes", 0)
        return set_timer("sleep_timer", {"minutes": current + minutes})

    def next_source() -> dict[str, Any]:
        index = SOURCES_IN_ORDER.index(s().input) if s().input in SOURCES_IN_ORDER else -1
        return update(input=SOURCES_IN_ORDER[(index + 1) % len(SOURCES_IN_ORDER)])

    def seek(delta: int) -> dict[str, Any]:
        return update(position_s=max(0, s().position_s + delta))

    def favorite(channel: str | None, add: bool) -> dict[str, Any]:
        name = channel or s().channel_name or str(s().channel)
        kept = [c for c in s().favorites if c != name]
        return update(favorites=[*kept, name] if add else kept)

    handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "power.tv.turn_off": lambda a: update(power="off"),
        "power.tv.standby": lambda a: update(power="standby"),
        "power.sleep_timer.set": lambda a: set_timer("sleep_timer", a),
        "power.sleep_timer.extend": lambda a: extend_sleep(a["minutes"]),
        "channel.tv.switch_number": lambda a: switch_channel(number=a["number"]),
        "channel.tv.switch_name": lambda a: switch_channel(name=a["channel"]),
        "channel.tv.next": lambda a: step_channel(1),
        "channel.tv.previous": lambda a: step_channel(-1),
        "channel.tv.last_watched": lambda a: switch_channel(s().previous_channel or s().channel),
        "channel.favorites.add": lambda a: favorite(a.get("channel"), add=True),
        "channel.favorites.remove": lambda a: favorite(a.get("channel"), add=False),
        "input.source.switch": lambda a: update(input=a["source"], app=None),
        "input.source.next": lambda a: next_source(),
        "app.application.open": lambda a: update(app=a["app"]),
        "app.application.close": lambda a: update(app=None),
        "app.application.force_stop": lambda a: update(app=None),
        "app.running.close_all": lambda a: update(app=None),
        "playback.media.play": lambda a: update(playback="playing"),
        "playback.media.resume": lambda a: update(playback="playing"),
        "playback.media.pause": lambda a: update(playback="paused"),
        "playback.media.stop": lambda a: update(playback="stopped", position_s=0),
        "playback.media.restart": lambda a: update(playback="playing", position_s=0),
        "playback.media.seek_forward": lambda a: seek(a["seconds"]),
        "playback.media.seek_backward": lambda a: seek(-a["seconds"]),
        "playback.media.seek_to": lambda a: update(position_s=a["minute"] * 60 + a.get("second", 0)),
        "sound.volume.mute_for": lambda a: {**set_timer(UNMUTE_TIMER, a), **tv._run(tv.registry["sound.mute.turn_on"], {})},
        "system.device.factory_reset": lambda a: tv.factory_reset(),
    }
    for timer in ("sleep_timer", "off_timer", "wake_timer"):
        handlers.setdefault(f"power.{timer}.set", lambda a, t=timer: set_timer(t, a))
        handlers[f"power.{timer}.cancel"] = lambda a, t=timer: cancel_timer(t)
    for domain in ("accessibility", "picture", "sound"):
        handlers[f"{domain}.settings.reset_all"] = lambda a, d=domain: tv.reset_settings(d)
    return handlers
