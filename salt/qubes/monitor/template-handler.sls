{#- In every template whose qubes sys-monitor polls:
    sudo qubesctl --skip-dom0 --targets=debian-13-xfce,fedora-43-xfce state.sls qubes.monitor.template-handler
    (the list is `handler_templates` in map.jinja; init.top does all).
    The sysmon-handler package (.deb or .rpm by the template's family): it
    depends on mawk, which the handler's first line names: Debian and Whonix
    ship it, Fedora's comes from Fedora's repositories. -#}
{%- from "qubes/monitor/package.jinja" import install_package with context %}
{{ install_package('sysmon-handler-package', 'sysmon-handler') }}
