{#- In sys-monitor's template and every handler template: undo
    template-monitor and template-handler.  Debian's python3-* packages stay:
    other software may use them. -#}
{%- from "qubes/monitor/map.jinja" import sysmon with context %}
{%- set root = sysmon.root %}

{%- if sysmon.enable_unit %}
sysmon-unit-disabled:
  service.disabled:
    - name: sysmon
    - require_in:
      - file: {{ root }}/usr/lib/systemd/system/sysmon.service
{%- endif %}

{%- for path in [sysmon.libdir, '/usr/bin/sysmon', '/etc/sysmon', '/usr/lib/systemd/system/sysmon.service', '/etc/qubes-rpc/qubes.Metrics.Get'] %}
{{ root }}{{ path }}:
  file.absent
{%- endfor %}
