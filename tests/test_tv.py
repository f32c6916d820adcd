"""The simulated TV: every registered function runs; families keep coherent state; named handlers work."""

import pytest

from tvcall.functions.tv import SimulatedTV, family_of


def sample_arguments(spec):
    def value(schema):
        if "enum" in schema:
            return schema["enum"][-1]
        if schema.get("type") == "integer":
            return schema["minimum"]
        if schema.get("type") == "boolean":
            return True
        return "测试"

    return {name: value(schema) for name, schema in spec.properties.items() if name in spec.required or "enum" in schema}


@pytest.fixture
def tv(registry):
    return SimulatedTV(registry)


def test_every_registered_function_runs_with_valid_arguments(tv, registry):
    for spec in registry.functions.values():
        result = tv.call(spec.name, sample_arguments(spec), "zh")
        assert result.ok and result.message == spec.description.zh[0]
    assert len(tv.state.history) == 50  # bounded


def test_invalid_calls_are_refused(tv):
    with pytest.raises(ValueError, match="invalid call"):
        tv.call("sound.volume.set", {"value": 101})
    with pytest.raises(ValueError, match="unknown function"):
        tv.call("sound.volume.explode", {})


def test_level_family_sets_steps_clamps_and_resets(tv):
    assert tv.volume == 20
    assert tv.call("sound.volume.set", {"value": 97}).data == {"setting": "sound.volume", "previous": 20, "value": 97}
    tv.call("sound.volume.increase", {})  # default step: a twentieth of the range
    assert tv.volume == 100
    tv.call("sound.volume.decrease", {"step": 30})
    assert tv.volume == 70
    tv.call("sound.volume.reset", {})
    assert tv.volume == 20
    assert tv.call("sound.bass.get", {}).data["value"] == 0  # midpoint of -10..10


def test_choice_and_toggle_families(tv):
    options = tv.call("sound.sound_mode.list_options", {}).data["options"]
    assert "movie" in options
    assert tv.call("sound.sound_mode.get", {}).data["value"] == options[0]
    tv.call("sound.sound_mode.set", {"value": "movie"})
    assert tv.call("sound.sound_mode.get", {}).data["value"] == "movie"
    assert tv.muted is False
    tv.call("sound.mute.turn_on", {})
    assert tv.muted is True and tv.call("sound.mute.get_status", {}).data["value"] is True


def test_room_scopes_smart_home_devices(tv):
    tv.call("smarthome.light.turn_on", {"room": "bedroom"})
    tv.call("smarthome.air_conditioner.set_temperature", {"value": 26, "room": "bedroom"})
    assert tv.call("smarthome.light.get_status", {"room": "bedroom"}).data["value"] is True
    assert tv.call("smarthome.light.get_status", {"room": "kitchen"}).data["value"] is False
    assert tv.state.settings["smarthome.air_conditioner.temperature@room=bedroom"] == 26
    tv.call("smarthome.curtain.close", {"room": "study"})
    assert tv.state.status["smarthome.curtain@room=study"] == "close"


def test_named_handlers_change_the_tv_state(tv):
    tv.call("channel.tv.switch_number", {"number": 5})
    tv.call("channel.tv.next", {})
    assert tv.state.channel == 6
    tv.call("channel.tv.last_watched", {})
    assert tv.state.channel == 5
    tv.call("input.source.switch", {"source": "hdmi2"})
    tv.call("input.source.next", {})
    assert tv.state.input == "hdmi3"
    tv.call("app.application.open", {"app": "爱奇艺"})
    tv.call("playback.media.play", {})
    tv.call("playback.media.seek_forward", {"seconds": 90})
    tv.call("playback.media.pause", {})
    assert (tv.state.app, tv.state.playback, tv.state.position_s) == ("爱奇艺", "paused", 90)
    tv.call("power.sleep_timer.set", {"minutes": 30})
    tv.call("power.sleep_timer.extend", {"minutes": 15})
    assert tv.state.timers["sleep_timer"] == {"minutes": 45}
    tv.call("power.sleep_timer.cancel", {})
    assert "sleep_timer" not in tv.state.timers
    tv.call("power.tv.standby", {})
    assert tv.state.power == "standby"
    tv.call("sound.volume.set", {"value": 30})  # a voice command wakes the TV
    assert tv.state.power == "on"


def test_resets_clear_their_domain_and_factory_reset_clears_everything(tv):
    tv.call("sound.volume.set", {"value": 60})
    tv.call("picture.brightness.set", {"value": 80})
    tv.call("sound.settings.reset_all", {})
    assert tv.volume == 20 and tv.state.settings == {"picture.brightness": 80}
    tv.call("system.device.factory_reset", {})
    assert tv.state.settings == {} and tv.state.factory_resets == 1


def test_family_of_reads_the_template_key(registry):
    family = family_of(registry["smarthome.light.set_color"])
    assert (family.kind, family.verb, family.setting) == ("choice", "set", "smarthome.light.color")
    assert family_of(registry["media.movie.query_director"]).kind == "query"
    assert family_of(registry["power.tv.turn_off"]) is None
