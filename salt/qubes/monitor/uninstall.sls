{#- dom0: undo sys-monitor.sls (the agent's service too, in the qubes
    agent_qubes names).  The qube and its data stay (its files are
    the only copy of today's metrics); remove it by hand with qvm-remove.
    Succeeds when sys-monitor was never created. -#}
{%- from "qubes/monitor/map.jinja" import sysmon with context %}

/etc/qubes/policy.d/30-sysmon.policy:
  file.absent

sysmon-qube-service-off:
  qvm.features:
    - name: {{ sysmon.monitor }}
    - default:
      - service.sysmon
    # qvm.features fails on a qube that does not exist ("Virtual Machine
    # does not exist!"): nothing to undo then.
    - onlyif: qvm-check --quiet {{ sysmon.monitor }}
{%- for vm in sysmon.agent_qubes %}

sysmon-agent-{{ vm }}-off:
  qvm.features:
    - name: {{ vm }}
    - default:
      - service.sysmon-agent
    - onlyif: qvm-check --quiet {{ vm }}
{%- endfor %}
