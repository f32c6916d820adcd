"""The calls that undo a call on the simulated TV, found from what it changed in the TV's state: a setting goes
back through its own `set` (or `turn_on`/`turn_off`) function, the channel, input, app, playback, timers and
favourites through the functions that set them, an object's status through the opposite action. Empty when
nothing changed or the registry has no call that restores all of it (a factory reset, turning the TV off)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvcall.functions.validate import call_errors

if TYPE_CHECKING:
    from tvcall.functions.tv import SimulatedTV, TVState

Call = tuple[str, dict[str, Any]]

OPPOSITE_ACTIONS = {
    "open": "close", "close": "open", "turn_on": "turn_off", "turn_off": "turn_on", "lock": "unlock", "unlock": "lock",
    "start": "stop", "stop": "start", "enable": "disable", "disable": "enable", "show": "hide", "hide": "show",
    "add": "remove", "remove": "add", "pause": "resume", "resume": "pause", "connect": "disconnect",
    "disconnect": "connect", "pin": "unpin", "unpin": "pin", "block": "unblock", "unblock": "block",
}
PLAYBACK_CALLS = {"playing": "playback.media.resume", "paused": "playback.media.pause", "stopped": "playback.media.stop"}


def setting_call(setting_key: str, value: Any) -> Call:
    """The call that sets 'domain.object[.attribute][@scope=value…]' to `value`."""
    setting, *scope = setting_key.split("@")
    domain, obj, *attribute = setting.split(".")
    suffix = f"_{attribute[0]}" if attribute else ""
    arguments: dict[str, Any] = dict(part.split("=", 1) for part in scope)
    if isinstance(value, bool):
        return f"{domain}.{obj}.turn_{'on' if value else 'off'}{suffix}", arguments
    return f"{domain}.{obj}.set{suffix}", {**arguments, "value": value}


def inverse_calls(tv: SimulatedTV, name: str, arguments: dict[str, Any], before: TVState) -> list[Call]:
    """What restores `before` after `name(arguments)` ran on `tv`, in order; [] when nothing can (or needs to)."""
    after = tv.state
    if before.factory_resets != after.factory_resets or (name.startswith("power.tv.") and before.power != after.power):
        return []  # no call takes a factory reset back or turns the TV on (a command that wakes it is not undone)
    calls: list[Call] = []
    if (before.channel, before.channel_name) != (after.channel, after.channel_name):
        calls.append(("channel.tv.switch_name", {"channel": before.channel_name}) if before.channel_name
                     else ("channel.tv.switch_number", {"number": before.channel}))
    if before.input != after.input:
        calls.append(("input.source.switch", {"source": before.input}))
    if before.app != after.app:
        calls.append(("app.application.open", {"app": before.app}) if before.app
                     else ("app.application.close", {"app": after.app}))
    if before.playback != after.playback:
        calls.append((PLAYBACK_CALLS[before.playback], {}))
    if before.position_s != after.position_s and before.playback == after.playback:
        calls.append(("playback.media.seek_to", {"minute": before.position_s // 60, "second": before.position_s % 60}))
    for timer in sorted(set(before.timers) | set(after.timers)):  # a timer without functions (mute_for's) goes with its setting
        if before.timers.get(timer) != after.timers.get(timer) and f"power.{timer}.cancel" in tv.registry.functions:
            calls.append((f"power.{timer}.set", dict(before.timers[timer])) if timer in before.timers
                         else (f"power.{timer}.cancel", {}))
    for channel in after.favorites:
        if channel not in before.favorites:
            calls.append(("channel.favorites.remove", {"channel": channel}))
    for channel in before.favorites:
        if channel not in after.favorites:
            calls.append(("channel.favorites.add", {"channel": channel}))
    for key in sorted(set(before.settings) | set(after.settings)):
        old, new = before.settings.get(key), after.settings.get(key)
        if old != new:
            calls.append(setting_call(key, old if key in before.settings else tv.default(key.split("@")[0])))
    for key in sorted(set(before.status) | set(after.status)):
        old, new = before.status.get(key), after.status.get(key)
        if old != new:
            domain, obj = key.split("@")[0].split(".")
            # the same arguments, so that it acts on the same scoped object (a restore that cannot take them fails)
            calls.append((f"{domain}.{obj}.{old or OPPOSITE_ACTIONS.get(new or '', '')}", dict(arguments)))
    if any(call_name not in tv.registry.functions or call_errors(tv.registry, call_name, call_arguments)
           for call_name, call_arguments in calls):
        return []
    return calls
